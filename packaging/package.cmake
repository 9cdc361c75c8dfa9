# package.cmake — the install rules and the Debian package (CPack DEB) of
# almanac, included by the top CMakeLists.txt. `cpack -G DEB` in the build
# tree writes almanac_<version>_<arch>.deb; its Depends come from
# dpkg-shlibdeps (dpkg-dev), which only cpack needs: configuring and
# building work without the dpkg tools.
#
# The layout (CPACK_PACKAGING_INSTALL_PREFIX /usr):
#   /usr/bin/almanac
#   /etc/almanac/almanac.conf              a conffile; data_dir /var/lib/almanac
#   /lib/systemd/system/almanac.service    User=almanac (postinst makes it)
#   /usr/share/man/man1/almanac.1.gz, man5/almanac.conf.5.gz
#   /usr/share/bash-completion/completions/almanac   if the source has it
#   /usr/share/doc/almanac/README.md
# These rules are the package's: /etc and /lib are absolute, and the unit
# names /usr/bin/almanac, so `cmake --install` is for staging a package, not
# for a /usr/local install (that one uses conf/almanac.service).

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

install(TARGETS almanac RUNTIME DESTINATION bin)
install(FILES ${PKG_OUT}/almanac.conf DESTINATION /etc/almanac)
install(FILES ${PKG_OUT}/almanac.service DESTINATION /lib/systemd/system)
install(FILES ${PKG_OUT}/man/almanac.1.gz DESTINATION share/man/man1)
install(FILES ${PKG_OUT}/man/almanac.conf.5.gz DESTINATION share/man/man5)
install(FILES ${CMAKE_SOURCE_DIR}/README.md DESTINATION share/doc/almanac)
# OPTIONAL: looked for when the package is made, not when CMake configures,
# so the completion written in packaging/ later ships without a re-configure.
install(FILES ${CMAKE_SOURCE_DIR}/packaging/almanac.bash-completion
        DESTINATION share/bash-completion/completions RENAME almanac OPTIONAL)

set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME almanac)
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGE_CONTACT "almanac maintainers <almanac@localhost>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY
    "the state of every MQTT topic as a key tree, with history")
set(CPACK_DEBIAN_PACKAGE_DESCRIPTION
    "almanac sits beside an MQTT broker and keeps the state of every topic as a
key tree: look it up over HTTP, change it from a script, watch it live over
WebSocket and Server-Sent Events, mirror it both ways to MQTT, and query it
back in time. One binary, one SQLite file.")
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_SECTION net)
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
# Merged with what dpkg-shlibdeps finds: postinst runs adduser.
set(CPACK_DEBIAN_PACKAGE_DEPENDS "adduser")
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA
    ${CMAKE_SOURCE_DIR}/packaging/postinst ${CMAKE_SOURCE_DIR}/packaging/prerm
    ${CMAKE_SOURCE_DIR}/packaging/postrm ${PKG_OUT}/conffiles)
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION ON)
file(WRITE ${PKG_OUT}/conffiles "/etc/almanac/almanac.conf\n")
set(CPACK_STRIP_FILES ON) # as Debian's packages: the symbols stay in the build tree
include(CPack)
