#!/usr/bin/env bash
# test_package.sh — the Debian packages as a user gets them (ctest: package.deb).
#
# Builds them from the build tree with `cpack -G DEB` in a scratch folder:
# almanac, libalmanac0 and libalmanac-dev (<name>_<version>_<arch>.deb), and
# no other. The daemon's: checks its Depends (written by dpkg-shlibdeps) and
# its files, none of them libalmanac's; installs it with `dpkg -i`; checks
# the `almanac` user, the state folder and the conffile; renders both man
# pages with groff, warnings being failures; starts `/usr/bin/almanac serve
# -c /etc/almanac/almanac.conf` as the almanac user (setpriv: CI has no
# systemd) on free ports, waits for /ready, writes and reads a key, checks
# the database under /var/lib/almanac; stops it; `dpkg -r` (the conffile and
# the user stay), `dpkg -P` (the user, /etc/almanac and /var/lib/almanac go)
# and checks that nothing is left. The library's: libalmanac0 holds the
# shared object and its soname link, with a shlibs file and an ldconfig
# trigger; libalmanac-dev the header, the .so link, the static library and
# almanac.pc, and depends on libalmanac0 of this very version; both are
# installed with `dpkg -i`, a program is built with `pkg-config --cflags
# --libs almanac` (and once with libalmanac.a) and run against a closed
# port, where almanac_connect must fail cleanly; then both are purged and
# nothing is left, not even in ldconfig's cache.
# Also: conf/almanac.service equals the unit template's /usr/local copy.
#
# It changes the machine (packages, a system user), so it needs root, or
# sudo without a password; without either it fails, it never passes
# untested. A package named almanac, libalmanac0 or libalmanac-dev, an
# almanac user or folder, or any file the packages hold, already there is
# never touched: the test fails naming it. Whatever happens, the trap stops
# the daemon and purges what this test installed.
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
for tool in "$CPACK" dpkg dpkg-deb dpkg-query dpkg-shlibdeps dpkg-architecture setpriv curl groff python3 cc pkg-config readelf ldconfig ldd; do
    command -v "$tool" >/dev/null || fail "$tool is missing (.ci/install-deps installs dpkg-dev, groff-base, curl, build-essential, pkg-config)"
done
ARCH=$(dpkg --print-architecture)
PACKAGES=(almanac libalmanac0 libalmanac-dev)

# Never clobber an almanac that is not this test's.
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -qv 'not-installed'; }
for pkg in "${PACKAGES[@]}"; do
    installed "$pkg" \
        && fail "a package named $pkg is already on this machine ($(dpkg-query -W -f='${Status} ${Version}' "$pkg")); remove it first (dpkg -P $pkg)"
done
getent passwd almanac >/dev/null && fail "a user named almanac already exists; this test would delete it on purge"
getent group almanac >/dev/null && fail "a group named almanac already exists; this test would delete it on purge"
for p in /etc/almanac /var/lib/almanac /usr/bin/almanac /lib/systemd/system/almanac.service; do
    [ -e "$p" ] && fail "$p already exists; this test would remove it on purge"
done

SCRATCH=$(mktemp -d /tmp/almanac-package.XXXXXX)
PID=
INSTALLED=() # the packages this test installed, for the trap to purge
cleanup() {
    local rc=$?
    if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then
        kill -TERM "$PID" 2>/dev/null
        for _ in $(seq 50); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$PID" 2>/dev/null
    fi
    if [ ${#INSTALLED[@]} -gt 0 ]; then
        "${SUDO[@]}" dpkg -P "${INSTALLED[@]}" >/dev/null 2>&1 \
            || echo "cleanup: dpkg -P ${INSTALLED[*]} failed" >&2
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

# 1. The packages, from this build tree: these three and no other (an
# install rule without a COMPONENT would make a fourth).
"$CPACK" -G DEB --config "$BUILD/CPackConfig.cmake" -B "$SCRATCH" >"$SCRATCH/cpack.log" 2>&1 \
    || { cat "$SCRATCH/cpack.log" >&2; fail "cpack -G DEB failed"; }
(cd "$SCRATCH" && ls -1 -- *.deb 2>/dev/null) >"$SCRATCH/debs"
printf '%s\n' "${PACKAGES[@]/%/_${VERSION}_$ARCH.deb}" | sort >"$SCRATCH/debs.expected"
sort -o "$SCRATCH/debs" "$SCRATCH/debs"
diff -u "$SCRATCH/debs.expected" "$SCRATCH/debs" >&2 || fail "cpack did not write exactly $(tr '\n' ' ' <"$SCRATCH/debs.expected")"
DEB=$SCRATCH/almanac_${VERSION}_$ARCH.deb
LIB_DEB=$SCRATCH/libalmanac0_${VERSION}_$ARCH.deb
DEV_DEB=$SCRATCH/libalmanac-dev_${VERSION}_$ARCH.deb
ok "built $(tr '\n' ' ' <"$SCRATCH/debs")"

# Each package's files (directories end in /) and symbolic links ("path
# target"); none may be on the machine yet, or a purge would remove it.
for pkg in "${PACKAGES[@]}"; do
    dpkg-deb -c "$SCRATCH/${pkg}_${VERSION}_$ARCH.deb" | awk '{print $6}' | sed 's|^\./|/|' >"$SCRATCH/$pkg.files"
    dpkg-deb -c "$SCRATCH/${pkg}_${VERSION}_$ARCH.deb" | awk '$7 == "->" {print $6, $8}' | sed 's|^\./|/|' >"$SCRATCH/$pkg.links"
    while read -r f; do
        case $f in */) continue ;; esac
        { [ -e "$f" ] || [ -L "$f" ]; } && fail "$f (in $pkg) already exists; this test would remove it on purge"
    done <"$SCRATCH/$pkg.files"
done

# 2. Depends: the libraries the binary links, as dpkg-shlibdeps names them.
DEPENDS=$(dpkg-deb -f "$DEB" Depends)
echo "Depends: $DEPENDS"
for lib in libc6 libmicrohttpd libsqlite3 libjansson libpaho-mqtt libssl libjwt libwslay; do
    echo "$DEPENDS" | grep -Eq "(^|, )${lib}[^,]* \(>= " \
        || fail "Depends lacks $lib (with a version, from dpkg-shlibdeps): $DEPENDS"
done
echo "$DEPENDS" | grep -Eq '(^|, )adduser(,|$)' || fail "Depends lacks adduser (postinst runs it): $DEPENDS"
grep -q libalmanac <<<"$DEPENDS" && fail "almanac depends on libalmanac (the CLI links it statically): $DEPENDS"
[ "$(dpkg-deb -f "$DEB" Section)" = net ] || fail "almanac's Section is $(dpkg-deb -f "$DEB" Section), not net"
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
lib_files=$(grep -E 'libalmanac|/include/|/pkgconfig/|\.(a|so)$|\.so\.' "$SCRATCH/files")
[ -z "$lib_files" ] || fail "the daemon's package holds library files: $(tr '\n' ' ' <<<"$lib_files")"
ok "the package holds ${EXPECT[*]}, and nothing of libalmanac"

# 3b. libalmanac0: the shared object and its soname link, nothing else; its
# shlibs file and ldconfig trigger; Depends from dpkg-shlibdeps.
[ "$(dpkg-deb -f "$LIB_DEB" Section)" = libs ] || fail "libalmanac0's Section is $(dpkg-deb -f "$LIB_DEB" Section), not libs"
SO0=$(grep -E '^/usr/lib/(.*/)?libalmanac\.so\.0$' "$SCRATCH/libalmanac0.files") \
    || fail "libalmanac0 lacks libalmanac.so.0: $(tr '\n' ' ' <"$SCRATCH/libalmanac0.files")"
LIBDIR=$(dirname "$SO0")
case $LIBDIR in
/usr/lib | "/usr/lib/$(dpkg-architecture -qDEB_HOST_MULTIARCH)") ;;
*) fail "libalmanac.so.0 is in $LIBDIR, where the dynamic linker does not look by itself" ;;
esac
[ "$(grep -v '/$' "$SCRATCH/libalmanac0.files" | sort)" = "$(printf '%s\n' "$SO0" "$LIBDIR/libalmanac.so.$VERSION" | sort)" ] \
    || fail "libalmanac0 holds $(grep -v '/$' "$SCRATCH/libalmanac0.files" | tr '\n' ' '), not just $SO0 and $LIBDIR/libalmanac.so.$VERSION"
grep -qx "$SO0 libalmanac.so.$VERSION" "$SCRATCH/libalmanac0.links" || fail "$SO0 is not a link to libalmanac.so.$VERSION"
mkdir "$SCRATCH/lib0"
dpkg-deb -x "$LIB_DEB" "$SCRATCH/lib0"
grep -q 'SONAME.*\[libalmanac\.so\.0\]' <<<"$(readelf -d "$SCRATCH/lib0$LIBDIR/libalmanac.so.$VERSION")" \
    || fail "libalmanac.so.$VERSION's SONAME is not libalmanac.so.0"
control() { dpkg-deb --ctrl-tarfile "$1" | tar -xO "./$2" 2>/dev/null; }
grep -qx 'activate-noawait ldconfig' <<<"$(control "$LIB_DEB" triggers)" \
    || fail "libalmanac0 has no triggers file with activate-noawait ldconfig: $(control "$LIB_DEB" triggers)"
grep -qx "libalmanac 0 libalmanac0 (>= $VERSION)" <<<"$(control "$LIB_DEB" shlibs)" \
    || fail "libalmanac0's shlibs is not 'libalmanac 0 libalmanac0 (>= $VERSION)': $(control "$LIB_DEB" shlibs)"
LIB_DEPENDS=$(dpkg-deb -f "$LIB_DEB" Depends)
for lib in libc6 libjansson libssl; do
    echo "$LIB_DEPENDS" | grep -Eq "(^|, )${lib}[^,]* \(>= " \
        || fail "libalmanac0's Depends lacks $lib (with a version, from dpkg-shlibdeps): $LIB_DEPENDS"
done
grep -Eq 'adduser|almanac' <<<"$LIB_DEPENDS" && fail "libalmanac0 depends on the daemon's needs: $LIB_DEPENDS"
ok "libalmanac0: $SO0 -> libalmanac.so.$VERSION (SONAME libalmanac.so.0), shlibs, ldconfig trigger; Depends: $LIB_DEPENDS"

# 3c. libalmanac-dev: the header, the .so link, the static library and
# almanac.pc (for /usr), no runtime; Depends on this very libalmanac0.
[ "$(dpkg-deb -f "$DEV_DEB" Section)" = libdevel ] || fail "libalmanac-dev's Section is $(dpkg-deb -f "$DEV_DEB" Section), not libdevel"
DEV_EXPECT=(/usr/include/almanac.h "$LIBDIR/libalmanac.so" "$LIBDIR/libalmanac.a" "$LIBDIR/pkgconfig/almanac.pc")
[ "$(grep -v '/$' "$SCRATCH/libalmanac-dev.files" | sort)" = "$(printf '%s\n' "${DEV_EXPECT[@]}" | sort)" ] \
    || fail "libalmanac-dev holds $(grep -v '/$' "$SCRATCH/libalmanac-dev.files" | tr '\n' ' '), not ${DEV_EXPECT[*]}"
grep -qx "$LIBDIR/libalmanac.so libalmanac.so.0" "$SCRATCH/libalmanac-dev.links" \
    || fail "$LIBDIR/libalmanac.so is not a link to libalmanac.so.0"
DEV_DEPENDS=$(dpkg-deb -f "$DEV_DEB" Depends)
for dep in "libalmanac0 (= $VERSION)" libjansson-dev libssl-dev; do
    grep -Fq -- "$dep" <<<"$DEV_DEPENDS" || fail "libalmanac-dev's Depends lacks $dep: $DEV_DEPENDS"
done
mkdir "$SCRATCH/dev"
dpkg-deb -x "$DEV_DEB" "$SCRATCH/dev"
grep -qx 'prefix=/usr' "$SCRATCH/dev$LIBDIR/pkgconfig/almanac.pc" \
    || fail "the packaged almanac.pc's prefix is not /usr: $(head -1 "$SCRATCH/dev$LIBDIR/pkgconfig/almanac.pc")"
ok "libalmanac-dev: ${DEV_EXPECT[*]}; Depends: $DEV_DEPENDS"

# 4. Install.
INSTALLED=(almanac) # (before dpkg -i: a failed install is purged too)
"${SUDO[@]}" dpkg -i "$DEB" >"$SCRATCH/dpkg-i.log" 2>&1 \
    || { cat "$SCRATCH/dpkg-i.log" >&2; fail "dpkg -i failed"; }
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
INSTALLED=()
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

# 9. The library: both packages installed; ldconfig's cache (the trigger)
# and pkg-config (its default path, not the caller's) find them. (With a
# merged /usr, ldconfig and ld.so may name /usr/lib/... as /lib/...)
INSTALLED=(libalmanac-dev libalmanac0)
"${SUDO[@]}" dpkg -i "$LIB_DEB" "$DEV_DEB" >"$SCRATCH/dpkg-i-lib.log" 2>&1 \
    || { cat "$SCRATCH/dpkg-i-lib.log" >&2; fail "dpkg -i libalmanac0 libalmanac-dev failed"; }
for pkg in libalmanac0 libalmanac-dev; do
    [ "$(dpkg-query -W -f='${Status}' "$pkg")" = "install ok installed" ] || fail "dpkg does not list $pkg as installed"
done
SO0_RE="(/usr)?${LIBDIR#/usr}/libalmanac\.so\.0"
# (grep -q on a pipe would stop its writer early: pipefail would fail)
grep -Eq "^[[:space:]]libalmanac\.so\.0 .*=> $SO0_RE\$" <<<"$(ldconfig -p)" \
    || fail "ldconfig's cache has no $LIBDIR/libalmanac.so.0 after the install: $(ldconfig -p | grep almanac)"
pc() { env -u PKG_CONFIG_PATH -u PKG_CONFIG_LIBDIR pkg-config "$@" almanac; }
[ "$(pc --modversion)" = "$VERSION" ] || fail "pkg-config --modversion almanac says $(pc --modversion), not $VERSION"
[ "$(pc --variable=libdir)" = "$LIBDIR" ] || fail "almanac.pc's libdir is $(pc --variable=libdir), not $LIBDIR"
[ "$(pc --variable=includedir)" = /usr/include ] || fail "almanac.pc's includedir is $(pc --variable=includedir), not /usr/include"
ok "libalmanac0 and libalmanac-dev installed: ldconfig knows libalmanac.so.0, pkg-config knows almanac $VERSION"

# 10. A program built against it, with pkg-config as README says: it links
# libalmanac.so.0 from the package, and almanac_connect to a port nobody
# listens on fails cleanly with ALMANAC_ECONNECT. Once more with the static
# library: nothing of libalmanac.so is needed then.
cat >"$SCRATCH/app.c" <<'C'
#include <almanac.h>
#include <stdio.h>

int main(int argc, char **argv)
{
    struct almanac *a = NULL;
    struct almanac_options o = {.no_reconnect = true, .timeout_ms = 5000};
    int err;

    if (argc != 2)
        return 2;
    err = almanac_connect(&a, argv[1], &o);
    printf("libalmanac %s: %s: %s\n", ALMANAC_CLIENT_VERSION, almanac_strerror(err),
           a ? almanac_errmsg(a) : "(no handle)");
    almanac_close(a);
    return err == ALMANAC_ECONNECT ? 0 : 1;
}
C
CLOSED=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# shellcheck disable=SC2046 # pkg-config's words are the flags
cc -Wall -Wextra -Werror -o "$SCRATCH/app" "$SCRATCH/app.c" $(pc --cflags --libs) >"$SCRATCH/cc.log" 2>&1 \
    || { cat "$SCRATCH/cc.log" >&2; fail "cc app.c \$(pkg-config --cflags --libs almanac) failed"; }
grep -q 'NEEDED.*\[libalmanac\.so\.0\]' <<<"$(readelf -d "$SCRATCH/app")" || fail "the program does not need libalmanac.so.0"
grep -Eq "libalmanac\.so\.0 => $SO0_RE " <<<"$(ldd "$SCRATCH/app")" \
    || fail "the program does not load $LIBDIR/libalmanac.so.0: $(ldd "$SCRATCH/app" | grep almanac)"
want="libalmanac $VERSION: cannot connect: cannot connect to 127.0.0.1:$CLOSED: Connection refused"
out=$("$SCRATCH/app" "127.0.0.1:$CLOSED") || fail "the program's almanac_connect did not fail with ALMANAC_ECONNECT: $out"
[ "$out" = "$want" ] || fail "the program says '$out', not '$want'"
static_libs=$(pc --static --libs)
# shellcheck disable=SC2046,SC2086
cc -Wall -Wextra -Werror -o "$SCRATCH/app-static" "$SCRATCH/app.c" $(pc --cflags) \
    "$LIBDIR/libalmanac.a" ${static_libs//-lalmanac/} >"$SCRATCH/cc-static.log" 2>&1 \
    || { cat "$SCRATCH/cc-static.log" >&2; fail "cc app.c libalmanac.a \$(pkg-config --static --libs almanac) failed"; }
grep -q libalmanac <<<"$(readelf -d "$SCRATCH/app-static")" && fail "the program linked with libalmanac.a still needs libalmanac.so"
out=$("$SCRATCH/app-static" "127.0.0.1:$CLOSED") || fail "the static program's almanac_connect did not fail with ALMANAC_ECONNECT: $out"
[ "$out" = "$want" ] || fail "the static program says '$out', not '$want'"
ok "built with pkg-config (libalmanac.so.0 from $LIBDIR) and with libalmanac.a; both say: $out"

# 11. Purge the library: nothing is left, in the file system, dpkg,
# ldconfig's cache or pkg-config.
"${SUDO[@]}" dpkg -P libalmanac-dev libalmanac0 >"$SCRATCH/dpkg-P-lib.log" 2>&1 \
    || { cat "$SCRATCH/dpkg-P-lib.log" >&2; fail "dpkg -P libalmanac-dev libalmanac0 failed"; }
INSTALLED=()
for pkg in libalmanac0 libalmanac-dev; do
    installed "$pkg" && fail "dpkg still knows $pkg after dpkg -P: $(dpkg-query -W -f='${Status}' "$pkg")"
    while read -r f; do
        case $f in */) continue ;; esac
        { [ -e "$f" ] || [ -L "$f" ]; } && fail "dpkg -P left $f"
    done <"$SCRATCH/$pkg.files"
done
grep -q libalmanac <<<"$(ldconfig -p)" && fail "ldconfig's cache still has libalmanac after dpkg -P: $(ldconfig -p | grep libalmanac)"
pc --exists && fail "pkg-config still finds almanac after dpkg -P"
ok "dpkg -P libalmanac-dev libalmanac0: every file gone, ldconfig and pkg-config forget it"
