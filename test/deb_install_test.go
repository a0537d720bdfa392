package test

import (
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// debInstallScript runs in a private mount namespace (unshare --mount): it
// builds the throwaway root $1/root on a tmpfs, with copy-on-write
// overlays of this machine's /usr, /etc and dpkg database (so dpkg sees
// the package's dependencies installed and adduser finds its tools), and
// installs the package $2 with dpkg --root, which runs the maintainer
// scripts chrooted there. Everything it writes goes to the tmpfs and ends
// with the namespace. Lines starting with a marker word report to the test.
const debInstallScript = `
set -eu
T=$1; DEB=$2; R=$T/root
mount -t tmpfs -o mode=0755 tmpfs "$T"
mkdir -p "$R" "$T/up" "$T/work"
ov() {
	mkdir -p "$T/up/$2" "$T/work/$2" "$R$1"
	mount -t overlay overlay -o "lowerdir=$1,upperdir=$T/up/$2,workdir=$T/work/$2" "$R$1"
}
ov /usr usr; ov /etc etc; ov /var/lib/dpkg dpkg
for d in bin sbin lib lib32 lib64 libx32; do
	if [ -L /$d ]; then ln -s "$(readlink /$d)" "$R/$d"; fi
done
mkdir -p "$R/tmp" "$R/run" "$R/root" "$R/dev" "$R/proc" "$R/var/log" "$R/var/cache" "$R/var/tmp"
touch "$R/dev/null"; mount --bind /dev/null "$R/dev/null"
mount -t proc proc "$R/proc"
export PATH=/usr/sbin:/usr/bin:/sbin:/bin

# A fresh install: a gatehouse user this machine already has (make deps
# creates one for the privilege-separation tests) is removed from the
# copy-on-write /etc of the throwaway root only, so postinst creates its own.
if chroot "$R" getent passwd gatehouse >/dev/null; then chroot "$R" userdel gatehouse; fi
if chroot "$R" getent group gatehouse >/dev/null; then chroot "$R" groupdel gatehouse; fi

dpkg --root="$R" --no-triggers --install "$DEB"
G="chroot $R /usr/bin/gatehouse"

# The example as shipped names certificate files that do not exist yet:
# check must say so (it reads the throwaway root's /etc, not the machine's).
if $G check -c /etc/gatehouse/gatehouse.yaml >"$T/nopki" 2>&1; then echo "UNEXPECTED check passed without the PKI"; fi
echo "NOPKI $(grep -c 'no such file' "$T/nopki")"

# The PKI the example names, made with the installed binary's own tools:
# acme has a root and an issuing CA (CRL file: the root's, then the
# issuing CA's), initech one CA, the listeners a server certificate for
# dmz.example.net, the backends a corporate CA.
P=/tmp/pki
$G certs init-ca --dir $P/acme-root --cn "acme root" --path-len 1 >/dev/null
$G certs init-ca --dir $P/acme-issuing --cn "acme issuing" --parent $P/acme-root --path-len 0 >/dev/null
$G certs init-ca --dir $P/initech --cn "initech" >/dev/null
$G certs init-ca --dir $P/dmz --cn "dmz" >/dev/null
$G certs init-ca --dir $P/corp --cn "corp" >/dev/null
$G certs crl --ca $P/acme-root --out $P/root.crl >/dev/null
$G certs crl --ca $P/acme-issuing --out $P/issuing.crl >/dev/null
E=$R/etc/gatehouse
mkdir -p $E/tenants/acme $E/tenants/initech $E/tls
cp $R$P/acme-root/ca.pem $E/tenants/acme/root.pem
cp $R$P/acme-issuing/ca.pem $E/tenants/acme/issuing.pem
cat $R$P/root.crl $R$P/issuing.crl >$E/tenants/acme/ca.crl
cp $R$P/initech/ca.pem $E/tenants/initech/ca.pem
cp $R$P/corp/ca.pem $E/tls/corp-ca.pem
$G certs issue --ca $P/dmz --server --dns dmz.example.net --chain --out /etc/gatehouse/tls/dmz.example.net >/dev/null
echo "CHECK-BEGIN"
$G check -c /etc/gatehouse/gatehouse.yaml
echo "CHECK-END"

chroot "$R" stat -c 'STAT %n %U:%G %a' /var/log/gatehouse /var/lib/gatehouse /etc/gatehouse /etc/gatehouse/gatehouse.yaml /usr/bin/gatehouse
echo "USER $(chroot "$R" getent passwd gatehouse)"
echo "GROUP $(chroot "$R" getent group gatehouse)"

# Again, over an admin's edit of the conffile: the postinst is idempotent
# and the edit stays.
echo "# edited by the admin" >>$E/gatehouse.yaml
dpkg --root="$R" --no-triggers --install "$DEB"
echo "USER-AGAIN $(chroot "$R" getent passwd gatehouse)"
echo "CONFFILE $(tail -n 1 $E/gatehouse.yaml)"

# Purge: the package's files, its state and logs go; the user stays.
dpkg --root="$R" --no-triggers --purge gatehouse
for p in /usr/bin/gatehouse /lib/systemd/system/gatehouse.service /var/lib/gatehouse /var/log/gatehouse; do
	if [ -e "$R$p" ]; then echo "LEFT $p"; fi
done
echo "USER-PURGED $(chroot "$R" getent passwd gatehouse)"
echo "DONE"
`

func checkDebInstall(t *testing.T, deb string) {
	out, err := runLong(t, 5*time.Minute, "", "unshare", "--mount", "--propagation", "private",
		"sh", "-c", debInstallScript, "sh", t.TempDir(), deb)
	t.Logf("install:\n%s", out)
	if err != nil {
		t.Fatalf("install script: %v", err)
	}
	lines := map[string][]string{}
	for _, l := range strings.Split(out, "\n") {
		if k, v, ok := strings.Cut(l, " "); ok {
			lines[k] = append(lines[k], v)
		}
	}
	one := func(k string) string {
		if len(lines[k]) != 1 {
			t.Fatalf("marker %s: %q", k, lines[k])
		}
		return lines[k][0]
	}
	if !strings.Contains(out, "\nDONE") || len(lines["UNEXPECTED"]) > 0 {
		t.Fatalf("install script incomplete or surprised")
	}
	if n, _ := strconv.Atoi(one("NOPKI")); n == 0 {
		t.Error("check on the example without its certificate files named no missing file")
	}
	if !strings.Contains(out, "CHECK-BEGIN") || !strings.Contains(out, "CHECK-END") {
		t.Error("gatehouse check of the shipped example did not pass")
	}

	user := regexp.MustCompile(`^gatehouse:x:(\d+):(\d+):[^:]*:/var/lib/gatehouse:(/usr/sbin/nologin|/bin/false)$`)
	m := user.FindStringSubmatch(one("USER"))
	if m == nil {
		t.Fatalf("gatehouse user: %q, want a system user with home /var/lib/gatehouse and no shell", one("USER"))
	}
	if uid, _ := strconv.Atoi(m[1]); uid == 0 || uid >= 1000 {
		t.Errorf("gatehouse uid %d: want a system uid (1-999)", uid)
	}
	if g := one("GROUP"); !strings.HasPrefix(g, "gatehouse:x:"+m[2]+":") {
		t.Errorf("gatehouse group %q: want gid %s, the user's primary group", g, m[2])
	}
	if again := one("USER-AGAIN"); again != one("USER") {
		t.Errorf("reinstall changed the user: %q, was %q", again, one("USER"))
	}
	if purged := one("USER-PURGED"); purged != one("USER") {
		t.Errorf("purge changed or removed the user: %q (files it owned may outlive the package)", purged)
	}
	if c := one("CONFFILE"); c != "# edited by the admin" {
		t.Errorf("reinstall replaced the admin's edit of the conffile: last line %q", c)
	}
	if left := lines["LEFT"]; len(left) > 0 {
		t.Errorf("purge left %v", left)
	}

	want := map[string]string{
		"/var/log/gatehouse":            "gatehouse:gatehouse 750",
		"/var/lib/gatehouse":            "root:root 700",
		"/etc/gatehouse":                "root:root 750",
		"/etc/gatehouse/gatehouse.yaml": "root:root 600",
		"/usr/bin/gatehouse":            "root:root 755",
	}
	for _, st := range lines["STAT"] {
		path, got, _ := strings.Cut(st, " ")
		if w, ok := want[path]; !ok || got != w {
			t.Errorf("installed %s: %s, want %s", path, got, w)
		}
		delete(want, path)
	}
	for path := range want {
		t.Errorf("installed %s: not stat'ed", path)
	}
}
