# package.cmake — the install rules and the Debian packages (CPack DEB) of
# almanac, included by the top CMakeLists.txt. Every install rule names its
# component, and `cpack -G DEB` in the build tree writes one package per
# component (<name>_<version>_<arch>.deb):
#
#   almanac         (component daemon, Section net) the daemon and the CLI
#     /usr/bin/almanac                       the CLI links libalmanac statically
#     /etc/almanac/almanac.conf              a conffile; data_dir /var/lib/almanac
#     /lib/systemd/system/almanac.service    User=almanac (postinst makes it)
#     /usr/share/man/man1/almanac.1.gz, man5/almanac.conf.5.gz
#     /usr/share/bash-completion/completions/almanac   if the source has it
#     /usr/share/doc/almanac/README.md
#   libalmanac0     (component lib, Section libs) the C client's runtime
#     /usr/lib/<multiarch>/libalmanac.so.<version>, libalmanac.so.0 -> it
#   libalmanac-dev  (component dev, Section libdevel) building against it
#     /usr/include/almanac.h
#     /usr/lib/<multiarch>/libalmanac.so -> libalmanac.so.0, libalmanac.a
#     /usr/lib/<multiarch>/pkgconfig/almanac.pc
#
# The library is split the way Debian splits one: the runtime alone, named
# after its soname, is what a program built against it needs (and what a
# soname bump installs beside the old one); -dev holds what only a compiler
# needs and depends on that exact runtime, and on libjansson-dev and
# libssl-dev, which almanac.pc's Requires.private names (pkg-config
# resolves them even for --cflags, and the static library needs them). The
# daemon package holds no part of the library: a server's package carries no
# development files. libalmanac0 has a `triggers` file (activate-noawait
# ldconfig: dpkg runs ldconfig once, after the whole run) and a `shlibs`
# file (libalmanac 0 libalmanac0 (>= <version>)), for packages built
# against it. CPack also writes a postinst and a postrm calling ldconfig for
# any library under /usr/lib, with no switch to turn that off: harmless.
#
# Depends come from dpkg-shlibdeps (dpkg-dev), which only cpack needs:
# configuring and building work without the dpkg tools. These rules are the
# packages': /etc and /lib are absolute, and the unit names /usr/bin/almanac,
# so `cmake --install` (every component, or --component daemon|lib|dev) is
# for staging a package, not for a /usr/local install (that one uses
# conf/almanac.service).

set(PKG_OUT ${CMAKE_BINARY_DIR}/packaging)

# The conffile, at build time from conf/almanac.conf.
add_custom_command(
  OUTPUT ${PKG_OUT}/almanac.conf
  COMMAND ${CMAKE_COMMAND} -DIN=${CMAKE_SOURCE_DIR}/conf/almanac.conf
          -DOUT=${PKG_OUT}/almanac.conf -P ${CMAKE_SOURCE_DIR}/packaging/conffile.cmake
  DEPENDS ${CMAKE_SOURCE_DIR}/conf/almanac.conf ${CMAKE_SOURCE_DIR}/packaging/conffile.cmake
  COMMENT "Writing the package's almanac.conf" VERBATIM)

# The man pages, at build time from their one source (doc/mkman.py says it).
set(MAN_OUTPUTS ${PKG_OUT}/man/almanac.1 ${PKG_OUT}/man/almanac.1.gz
                ${PKG_OUT}/man/almanac.conf.5 ${PKG_OUT}/man/almanac.conf.5.gz)
add_custom_command(
  OUTPUT ${MAN_OUTPUTS}
  COMMAND ${Python3_EXECUTABLE} ${CMAKE_SOURCE_DIR}/doc/mkman.py
          --conf ${CMAKE_SOURCE_DIR}/conf/almanac.conf --commands ${CMAKE_SOURCE_DIR}/doc/commands.txt
          --version ${PROJECT_VERSION} --out ${PKG_OUT}/man
  DEPENDS ${CMAKE_SOURCE_DIR}/doc/mkman.py ${CMAKE_SOURCE_DIR}/doc/commands.txt
          ${CMAKE_SOURCE_DIR}/conf/almanac.conf
  COMMENT "Writing almanac(1) and almanac.conf(5)" VERBATIM)
add_custom_target(package_files ALL DEPENDS ${PKG_OUT}/almanac.conf ${MAN_OUTPUTS})

# The units, from one template: the package's, and the /usr/local one that
# conf/almanac.service must equal (the package.deb test compares them).
set(ALMANAC_EXEC_START "/usr/bin/almanac serve -c /etc/almanac/almanac.conf")
set(ALMANAC_USER "User=almanac\nGroup=almanac")
configure_file(${CMAKE_SOURCE_DIR}/packaging/almanac.service.in ${PKG_OUT}/almanac.service @ONLY)
set(ALMANAC_EXEC_START
    "/usr/local/bin/almanac serve -c /etc/almanac/almanac.conf --data_dir /var/lib/almanac")
set(ALMANAC_USER "DynamicUser=yes")
configure_file(${CMAKE_SOURCE_DIR}/packaging/almanac.service.in ${PKG_OUT}/almanac.service.local @ONLY)

install(TARGETS almanac RUNTIME DESTINATION bin COMPONENT daemon)
install(FILES ${PKG_OUT}/almanac.conf DESTINATION /etc/almanac COMPONENT daemon)
install(FILES ${PKG_OUT}/almanac.service DESTINATION /lib/systemd/system COMPONENT daemon)
install(FILES ${PKG_OUT}/man/almanac.1.gz DESTINATION share/man/man1 COMPONENT daemon)
install(FILES ${PKG_OUT}/man/almanac.conf.5.gz DESTINATION share/man/man5 COMPONENT daemon)
install(FILES ${CMAKE_SOURCE_DIR}/README.md DESTINATION share/doc/almanac COMPONENT daemon)
# OPTIONAL: looked for when the package is made, not when CMake configures,
# so the completion written in packaging/ later ships without a re-configure.
install(FILES ${CMAKE_SOURCE_DIR}/packaging/almanac.bash-completion
        DESTINATION share/bash-completion/completions RENAME almanac OPTIONAL COMPONENT daemon)

# libalmanac: the versioned shared object and its soname link in lib; the
# link the linker looks for (libalmanac.so), the static library and the
# header in dev.
install(TARGETS almanac_client almanac_client_static
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT lib NAMELINK_COMPONENT dev
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT dev
        PUBLIC_HEADER DESTINATION ${CMAKE_INSTALL_INCLUDEDIR} COMPONENT dev)
# almanac.pc names its folders, so it is written when installing, for that
# install's prefix: /usr under cpack (CPACK_PACKAGING_INSTALL_PREFIX), the
# --prefix of `cmake --install`.
install(CODE "set(PC_PREFIX \"\${CMAKE_INSTALL_PREFIX}\")
  set(PC_LIBDIR \"${CMAKE_INSTALL_LIBDIR}\")
  set(PC_INCLUDEDIR \"${CMAKE_INSTALL_INCLUDEDIR}\")
  set(PC_VERSION \"${PROJECT_VERSION}\")
  configure_file(\"${CMAKE_SOURCE_DIR}/clients/c/almanac.pc.in\" \"${PKG_OUT}/almanac.pc\" @ONLY)"
        COMPONENT dev)
install(FILES ${PKG_OUT}/almanac.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig COMPONENT dev)

set(CPACK_GENERATOR DEB)
set(CPACK_DEB_COMPONENT_INSTALL ON) # one package per component
set(CPACK_PACKAGE_NAME almanac)
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGE_CONTACT "almanac maintainers <almanac@localhost>")
# No CPACK_PACKAGE_DESCRIPTION_SUMMARY: CPackDeb puts it before every
# package's description; each has its own first line here.
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_PACKAGE_GENERATE_SHLIBS ON) # the shlibs file of libalmanac0
set(CPACK_DEBIAN_PACKAGE_GENERATE_SHLIBS_POLICY ">=") # the soname changes with the ABI
set(CPACK_DEBIAN_ENABLE_COMPONENT_DEPENDS ON) # dev: libalmanac0 (= <version>)
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION ON)
set(CPACK_STRIP_FILES ON) # as Debian's packages: the symbols stay in the build tree

# almanac, the daemon. Depends: what dpkg-shlibdeps finds, and adduser
# (postinst runs it).
set(CPACK_DEBIAN_DAEMON_PACKAGE_NAME almanac)
set(CPACK_DEBIAN_DAEMON_PACKAGE_SECTION net)
set(CPACK_DEBIAN_DAEMON_PACKAGE_DEPENDS "adduser")
set(CPACK_DEBIAN_DAEMON_DESCRIPTION
    "the state of every MQTT topic as a key tree, with history
almanac sits beside an MQTT broker and keeps the state of every topic as a
key tree: look it up over HTTP, change it from a script, watch it live over
WebSocket and Server-Sent Events, mirror it both ways to MQTT, and query it
back in time. One binary, one SQLite file.")
set(CPACK_DEBIAN_DAEMON_PACKAGE_CONTROL_EXTRA
    ${CMAKE_SOURCE_DIR}/packaging/postinst ${CMAKE_SOURCE_DIR}/packaging/prerm
    ${CMAKE_SOURCE_DIR}/packaging/postrm ${PKG_OUT}/conffiles)
file(WRITE ${PKG_OUT}/conffiles "/etc/almanac/almanac.conf\n")

# libalmanac0, the runtime. Depends: what dpkg-shlibdeps finds.
set(CPACK_DEBIAN_LIB_PACKAGE_NAME libalmanac0)
set(CPACK_DEBIAN_LIB_PACKAGE_SECTION libs)
set(CPACK_DEBIAN_LIB_DESCRIPTION
    "C client library of almanac, the MQTT topic state server
libalmanac speaks almanac's session protocol over TCP, TLS or a Unix
socket: get, set and delete keys, read their history, and subscribe to
patterns, resumed after a dropped connection with no gap and no duplicate.
This package holds the shared library.")
set(CPACK_DEBIAN_LIB_PACKAGE_CONTROL_EXTRA ${PKG_OUT}/lib/triggers)
file(WRITE ${PKG_OUT}/lib/triggers "activate-noawait ldconfig\n")

# libalmanac-dev: the header, the .so link, the static library, almanac.pc.
set(CPACK_DEBIAN_DEV_PACKAGE_NAME libalmanac-dev)
set(CPACK_DEBIAN_DEV_PACKAGE_SECTION libdevel)
set(CPACK_COMPONENT_DEV_DEPENDS lib)
set(CPACK_DEBIAN_DEV_PACKAGE_DEPENDS "libjansson-dev, libssl-dev")
set(CPACK_DEBIAN_DEV_DESCRIPTION
    "C client library of almanac - development files
libalmanac speaks almanac's session protocol over TCP, TLS or a Unix
socket. This package holds what building against it needs: the header
almanac.h, libalmanac.so for the linker, the static libalmanac.a and
almanac.pc (cc app.c $(pkg-config --cflags --libs almanac)).")
include(CPack)
