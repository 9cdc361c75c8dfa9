# seeds.cmake — copies a harness's committed corpus, but for its crash-*
# reproducers, to SEEDS (cmake -DCORPUS=... -DSEEDS=... -P seeds.cmake), so
# the timed fuzzing run starts from the corpus without stopping on a known
# crash: fuzz.<name>.corpus already keeps those red until they are fixed.
file(REMOVE_RECURSE ${SEEDS})
file(MAKE_DIRECTORY ${SEEDS})
file(GLOB inputs ${CORPUS}/*)
foreach(input ${inputs})
  get_filename_component(name ${input} NAME)
  if(NOT name MATCHES "^crash-")
    file(COPY ${input} DESTINATION ${SEEDS})
  endif()
endforeach()
