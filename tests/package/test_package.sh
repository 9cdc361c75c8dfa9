#!/usr/bin/env bash
# test_package.sh — the Debian package as a user gets it (ctest: package.deb).
#
# Builds almanac_<version>_<arch>.deb from the build tree with `cpack -G DEB`
# in a scratch folder; checks its Depends (written by dpkg-shlibdeps) and its
# files; installs it with `dpkg -i`; checks the `almanac` user, the state
# folder and the conffile; renders both man pages with groff, warnings being
# failures; starts `/usr/bin/almanac serve -c /etc/almanac/almanac.conf` as
# the almanac user (setpriv: CI has no systemd) on free ports, waits for
# /ready, writes and reads a key, checks the database under /var/lib/almanac;
# stops it; `dpkg -r` (the conffile and the user stay), `dpkg -P` (the user,
# /etc/almanac and /var/lib/almanac go) and checks that nothing is left.
# Also: conf/almanac.service equals the unit template's /usr/local copy.
#
# It changes the machine (a package, a system user), so it needs root, or
# sudo without a password; without either it fails, it never passes
# untested. An almanac package, user or folder already there is never
# touched: the test fails naming it. Whatever happens, the trap stops the
# daemon and purges what this test installed.
#
# usage: test_package.sh SOURCE_DIR BUILD_DIR VERSION [CPACK]
set -uo pipefail

SRC=$1 BUILD=$2 VERSION=$3 CPACK=${4:-cpack}
fail() { echo "FAIL: $*" >&2; exit 1; }
ok() { echo "ok: $*"; }

if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
else
    fail "installing a package needs root or passwordless sudo (run ctest as root, or configure sudo -n)"
fi
for tool in "$CPACK" dpkg dpkg-deb dpkg-query dpkg-shlibdeps setpriv curl groff python3; do
    command -v "$tool" >/dev/null || fail "$tool is missing (.ci/install-deps installs dpkg-dev, groff-base, curl)"
done

# Never clobber an almanac that is not this test's.
if dpkg-query -W -f='${Status}' almanac 2>/dev/null | grep -qv 'not-installed'; then
    fail "a package named almanac is already on this machine ($(dpkg-query -W -f='${Status} ${Version}' almanac)); remove it first (dpkg -P almanac)"
fi
getent passwd almanac >/dev/null && fail "a user named almanac already exists; this test would delete it on purge"
getent group almanac >/dev/null && fail "a group named almanac already exists; this test would delete it on purge"
for p in /etc/almanac /var/lib/almanac /usr/bin/almanac /lib/systemd/system/almanac.service; do
    [ -e "$p" ] && fail "$p already exists; this test would remove it on purge"
done

SCRATCH=$(mktemp -d /tmp/almanac-package.XXXXXX)
PID= INSTALLED=
cleanup() {
    local rc=$?
    if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then
        kill -TERM "$PID" 2>/dev/null
        for _ in $(seq 50); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$PID" 2>/dev/null
    fi
    if [ -n "$INSTALLED" ]; then
        "${SUDO[@]}" dpkg -P almanac >/dev/null 2>&1 || echo "cleanup: dpkg -P almanac failed" >&2
    fi
    if [ $rc -ne 0 ] && [ -f "$SCRATCH/serve.log" ]; then
        echo "--- almanac serve's log:" >&2
        cat "$SCRATCH/serve.log" >&2
    fi
    "${SUDO[@]}" rm -rf "$SCRATCH"
    exit $rc
}
trap cleanup EXIT
trap 'exit 1' INT TERM

# 0. The /usr/local unit is the template's copy.
diff -u "$BUILD/packaging/almanac.service.local" "$SRC/conf/almanac.service" \
    || fail "conf/almanac.service differs from packaging/almanac.service.in as CMake writes it (build/packaging/almanac.service.local): change the template, then copy"
ok "conf/almanac.service is the template's /usr/local copy"

# 1. The package, from this build tree.
"$CPACK" -G DEB --config "$BUILD/CPackConfig.cmake" -B "$SCRATCH" >"$SCRATCH/cpack.log" 2>&1 \
    || { cat "$SCRATCH/cpack.log" >&2; fail "cpack -G DEB failed"; }
DEB=$SCRATCH/almanac_${VERSION}_$(dpkg --print-architecture).deb
[ -f "$DEB" ] || fail "cpack wrote no $(basename "$DEB") (it wrote: $(ls "$SCRATCH"))"
ok "built $(basename "$DEB")"

# 2. Depends: the libraries the binary links, as dpkg-shlibdeps names them.
DEPENDS=$(dpkg-deb -f "$DEB" Depends)
echo "Depends: $DEPENDS"
for lib in libc6 libmicrohttpd libsqlite3 libjansson libpaho-mqtt libssl libjwt libwslay; do
    echo "$DEPENDS" | grep -Eq "(^|, )$lib[^,]* \(>= " \
        || fail "Depends lacks $lib (with a version, from dpkg-shlibdeps): $DEPENDS"
done
echo "$DEPENDS" | grep -Eq '(^|, )adduser(,|$)' || fail "Depends lacks adduser (postinst runs it): $DEPENDS"
ok "Depends names every library with its shlibs version"

# 3. The files.
dpkg-deb -c "$DEB" | awk '{print $6}' | sed 's|^\./|/|' >"$SCRATCH/files"
EXPECT=(/usr/bin/almanac /etc/almanac/almanac.conf /lib/systemd/system/almanac.service
        /usr/share/man/man1/almanac.1.gz /usr/share/man/man5/almanac.conf.5.gz)
[ -f "$SRC/packaging/almanac.bash-completion" ] && EXPECT+=(/usr/share/bash-completion/completions/almanac)
for f in "${EXPECT[@]}"; do
    grep -qx "$f" "$SCRATCH/files" || fail "the package lacks $f; it has: $(tr '\n' ' ' <"$SCRATCH/files")"
done
grep -qx /etc/almanac/almanac.conf <<<"$(dpkg-deb --ctrl-tarfile "$DEB" | tar -xO ./conffiles)" \
    || fail "/etc/almanac/almanac.conf is not in the control file conffiles"
ok "the package holds ${EXPECT[*]}"

# 4. Install.
"${SUDO[@]}" dpkg -i "$DEB" >"$SCRATCH/dpkg-i.log" 2>&1 \
    || { cat "$SCRATCH/dpkg-i.log" >&2; INSTALLED=1; fail "dpkg -i failed"; }
INSTALLED=1
[ "$(dpkg-query -W -f='${Status}' almanac)" = "install ok installed" ] || fail "dpkg does not list almanac as installed"
IFS=: read -r _ _ _ _ _ home shell < <(getent passwd almanac) || fail "postinst made no almanac user"
[ "$home" = /var/lib/almanac ] || fail "the almanac user's home is $home, not /var/lib/almanac"
[ "$(id -u almanac)" -lt 1000 ] || fail "almanac is not a system user (uid $(id -u almanac))"
getent group almanac >/dev/null || fail "postinst made no almanac group"
[ "$(stat -c '%U:%G %a' /var/lib/almanac)" = "almanac:almanac 750" ] \
    || fail "/var/lib/almanac is $(stat -c '%U:%G %a' /var/lib/almanac), not almanac:almanac 750"
dpkg-query -W -f='${Conffiles}\n' almanac | grep -q '^ /etc/almanac/almanac.conf [0-9a-f]\{32\}' \
    || fail "dpkg has no conffile /etc/almanac/almanac.conf: $(dpkg-query -W -f='${Conffiles}' almanac)"
grep -qx 'data_dir /var/lib/almanac' /etc/almanac/almanac.conf || fail "the conffile's data_dir is not /var/lib/almanac"
[ "$(stat -c '%U:%G %a' /etc/almanac/almanac.conf)" = "root:almanac 640" ] \
    || fail "/etc/almanac/almanac.conf is $(stat -c '%U:%G %a' /etc/almanac/almanac.conf), not root:almanac 640"
grep -qx 'User=almanac' /lib/systemd/system/almanac.service \
    && grep -qx 'ExecStart=/usr/bin/almanac serve -c /etc/almanac/almanac.conf' /lib/systemd/system/almanac.service \
    || fail "the installed unit does not run /usr/bin/almanac as almanac"
[ "$(/usr/bin/almanac version)" = "almanac $VERSION" ] || fail "/usr/bin/almanac version says $(/usr/bin/almanac version)"
ok "installed: the almanac user (home /var/lib/almanac), /var/lib/almanac 0750, the conffile registered"

# 5. The man pages render, with no groff warning.
for page in /usr/share/man/man1/almanac.1.gz /usr/share/man/man5/almanac.conf.5.gz; do
    warnings=$(zcat "$page" | groff -man -Tutf8 -ww -z 2>&1)
    [ -z "$warnings" ] || fail "groff warns on $page: $warnings"
    # (grep -q on a pipe would stop its writer early: pipefail would fail)
    text=$(zcat "$page" | groff -man -Tutf8 -P-cbou 2>/dev/null) # plain text, no overstrike
    grep -q 'SEE ALSO' <<<"$text" || fail "$page renders without SEE ALSO"
done
grep -q 'history_max_bytes' <<<"$text" || fail "almanac.conf(5) lacks the last option"
ok "almanac(1) and almanac.conf(5) render without warnings"

# 6. The daemon, as the almanac user, as the unit would run it.
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
setpriv --reuid almanac --regid almanac --init-groups -- \
    /usr/bin/almanac serve -c /etc/almanac/almanac.conf --http_listen "127.0.0.1:$PORT" --tcp_listen off \
    >"$SCRATCH/serve.log" 2>&1 &
PID=$!
BASE=http://127.0.0.1:$PORT
for _ in $(seq 200); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$BASE/ready")" = 200 ] && break
    kill -0 "$PID" 2>/dev/null || fail "almanac serve exited before it was ready"
    sleep 0.1
done
[ "$(curl -s -o /dev/null -w '%{http_code}' "$BASE/ready")" = 200 ] || fail "/ready is not 200 after 20 s"
[ "$(ps -o user= -p "$PID")" = almanac ] || fail "the daemon runs as $(ps -o user= -p "$PID"), not almanac"
ok "almanac serve runs as almanac on 127.0.0.1:$PORT, /ready 200"
code=$(curl -s -o /dev/null -w '%{http_code}' -X PUT --data-binary 21.5 "$BASE/api/v1/keys/package/test")
[ "$code" = 200 ] || [ "$code" = 201 ] || fail "PUT /api/v1/keys/package/test answered $code"
grep -q '21.5' <<<"$(curl -s "$BASE/api/v1/keys/package/test")" || fail "GET /api/v1/keys/package/test does not return 21.5"
[ -f /var/lib/almanac/almanac.db ] || fail "no /var/lib/almanac/almanac.db"
[ "$(stat -c %U /var/lib/almanac/almanac.db)" = almanac ] || fail "almanac.db is owned by $(stat -c %U /var/lib/almanac/almanac.db)"
ok "a key written and read back; /var/lib/almanac/almanac.db is almanac's"
kill -TERM "$PID"
wait "$PID"; rc=$?
PID=
[ $rc -eq 0 ] || fail "almanac serve exited $rc on SIGTERM"
ok "SIGTERM: a clean stop"

# 7. Remove: the binary goes, the conffile, the user and the data stay.
"${SUDO[@]}" dpkg -r almanac >"$SCRATCH/dpkg-r.log" 2>&1 || { cat "$SCRATCH/dpkg-r.log" >&2; fail "dpkg -r almanac failed"; }
[ "$(dpkg-query -W -f='${Status}' almanac)" = "deinstall ok config-files" ] \
    || fail "after dpkg -r the status is $(dpkg-query -W -f='${Status}' almanac)"
[ ! -e /usr/bin/almanac ] || fail "/usr/bin/almanac is still there after dpkg -r"
[ -f /etc/almanac/almanac.conf ] || fail "dpkg -r removed the conffile"
getent passwd almanac >/dev/null || fail "dpkg -r removed the almanac user"
[ -f /var/lib/almanac/almanac.db ] || fail "dpkg -r removed the database"
ok "dpkg -r: the binary gone; the conffile, the user and the database kept"

# 8. Purge: nothing is left.
"${SUDO[@]}" dpkg -P almanac >"$SCRATCH/dpkg-P.log" 2>&1 || { cat "$SCRATCH/dpkg-P.log" >&2; fail "dpkg -P almanac failed"; }
INSTALLED=
dpkg-query -W -f='${Status}' almanac 2>/dev/null | grep -qv 'not-installed' \
    && fail "dpkg still knows almanac after dpkg -P: $(dpkg-query -W -f='${Status}' almanac)"
getent passwd almanac >/dev/null && fail "dpkg -P left the almanac user"
getent group almanac >/dev/null && fail "dpkg -P left the almanac group"
for p in /etc/almanac /var/lib/almanac; do
    [ -e "$p" ] && fail "dpkg -P left $p"
done
while read -r f; do
    case $f in */) continue ;; esac
    [ -e "$f" ] && fail "dpkg -P left $f"
done <"$SCRATCH/files"
ok "dpkg -P: the user, /etc/almanac, /var/lib/almanac and every file gone"
