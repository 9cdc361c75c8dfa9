# conffile.cmake — writes the package's /etc/almanac/almanac.conf: a copy of
# conf/almanac.conf (the one documented list of options) whose data_dir line
# says /var/lib/almanac. Fails if the source has no `data_dir` line, so a
# renamed option cannot ship a package that writes to ./data.
# cmake -DIN=conf/almanac.conf -DOUT=build/packaging/almanac.conf -P conffile.cmake
file(READ "${IN}" text)
string(REGEX MATCH "\ndata_dir [^\n]*\n" old "${text}")
if(NOT old)
  message(FATAL_ERROR "${IN}: no `data_dir` line to replace")
endif()
string(REPLACE "${old}" "\ndata_dir /var/lib/almanac\n" text "${text}")
file(WRITE "${OUT}" "${text}")
