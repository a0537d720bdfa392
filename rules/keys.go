package rules

import (
	"errors"
	"fmt"

	"aead.dev/minisign"
)

// GenerateKey makes a minisign key pair. The secret key file is encrypted
// with password (scrypt with minisign's parameters, about 1 GiB of memory
// for a moment) or, with an empty password, stored unencrypted exactly as
// `minisign -G -W` does. Both files are read by the minisign tool.
func GenerateKey(password string) (pubFile, secretFile []byte, pub minisign.PublicKey, err error) {
	pub, priv, err := minisign.GenerateKey(nil)
	if err != nil {
		return nil, nil, minisign.PublicKey{}, fmt.Errorf("generate key: %w", err)
	}
	if password == "" {
		secretFile, err = priv.MarshalText()
	} else {
		secretFile, err = minisign.EncryptKey(password, priv)
	}
	if err != nil {
		return nil, nil, minisign.PublicKey{}, fmt.Errorf("encode secret key: %w", err)
	}
	if len(secretFile) > 0 && secretFile[len(secretFile)-1] != '\n' {
		secretFile = append(secretFile, '\n')
	}
	pubFile, err = pub.MarshalText()
	if err != nil {
		return nil, nil, minisign.PublicKey{}, err
	}
	return append(pubFile, '\n'), secretFile, pub, nil
}

// ErrPasswordRequired is returned by ParseSecretKey for an encrypted key
// without a password.
var ErrPasswordRequired = errors.New("secret key is encrypted: password required")

// ParseSecretKey reads a minisign secret key file, decrypting it with
// password when it is encrypted.
func ParseSecretKey(data []byte, password string) (minisign.PrivateKey, error) {
	if minisign.IsEncrypted(data) {
		if password == "" {
			return minisign.PrivateKey{}, ErrPasswordRequired
		}
		k, err := minisign.DecryptKey(password, data)
		if err != nil {
			return minisign.PrivateKey{}, fmt.Errorf("decrypt secret key: %w", err)
		}
		return k, nil
	}
	var k minisign.PrivateKey
	if err := k.UnmarshalText(data); err != nil {
		return minisign.PrivateKey{}, err
	}
	return k, nil
}
