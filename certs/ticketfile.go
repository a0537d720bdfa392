package certs

import (
	"bufio"
	"bytes"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"strings"
)

// The ticket key file (tls.ticket_keys) is what lets a session made on one
// node of a fleet resume on another: every node reads the same keys. Its
// format is one key a line, base64 of 32 or 48 random bytes (`openssl rand
// -base64 48`), the current key first and the previous ones after it; the
// first encrypts new tickets, all decrypt. Blank lines and lines starting
// with # are ignored.
const (
	// maxTicketFileKeys bounds how many keys decrypt: each is tried on
	// every resumption, and a key kept forever keeps its tickets alive.
	maxTicketFileKeys = 8
	ticketKeyInfo     = "gatehouse session ticket key v1\x00"
)

// loadTicketFile reads the ticket key file at path and returns its keys,
// current first. It refuses a file any other user may read or a group may
// write, a key that is not base64 of 32 or 48 bytes, a key given twice,
// more than maxTicketFileKeys keys and a file without any.
func loadTicketFile(ld *loader, path string) ([][]byte, error) {
	// One descriptor for the check and the read (FileSource.ReadFileInfo):
	// the mode checked is the mode of the file whose keys are read,
	// whatever a path or symlink points to meanwhile; a FIFO is refused,
	// not waited on.
	fi, data, err := ld.src.ReadFileInfo(path)
	if err != nil {
		return nil, fmt.Errorf("tls.ticket_keys: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("tls.ticket_keys %s: %w", path, ErrTicketKeysNotFile)
	}
	if perm := fi.Mode().Perm(); perm&0o027 != 0 {
		return nil, fmt.Errorf("tls.ticket_keys %s: mode %04o: %w", path, perm, ErrTicketKeysOpen)
	}
	ld.files[path] = fileSig{sum: sha256.Sum256(data), size: fi.Size(), mtime: fi.ModTime()}
	keys, err := parseTicketKeys(data)
	if err != nil {
		return nil, fmt.Errorf("tls.ticket_keys %s: %w", path, err)
	}
	return keys, nil
}

// parseTicketKeys parses the content of a ticket key file.
func parseTicketKeys(data []byte) ([][]byte, error) {
	var keys [][]byte
	seen := map[string]int{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, err := base64.StdEncoding.DecodeString(line)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w: not base64", n, ErrTicketKeyBad)
		}
		if len(k) != 32 && len(k) != 48 {
			return nil, fmt.Errorf("line %d: %w: %d bytes, want 32 or 48", n, ErrTicketKeyBad, len(k))
		}
		if first, dup := seen[string(k)]; dup {
			return nil, fmt.Errorf("line %d: %w (line %d)", n, ErrTicketKeyDuplicate, first)
		}
		seen[string(k)] = n
		keys = append(keys, k)
		if len(keys) > maxTicketFileKeys {
			return nil, fmt.Errorf("line %d: %w: at most %d", n, ErrTicketKeysTooMany, maxTicketFileKeys)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(keys) == 0 {
		return nil, ErrTicketKeysEmpty
	}
	return keys, nil
}

// ticketSetFromFile is a listener's share of the file's keys: each key is
// run through HKDF with the listener's name, so that every node derives the
// same keys for a listener while a ticket of one listener still cannot
// resume on another.
func ticketSetFromFile(keys [][]byte, listener string) (*ticketSet, error) {
	ts := &ticketSet{}
	for _, k := range keys {
		d, err := hkdf.Key(sha256.New, k, nil, ticketKeyInfo+listener, 32)
		if err != nil {
			return nil, err
		}
		ts.keys = append(ts.keys, [32]byte(d))
	}
	return ts, nil
}
