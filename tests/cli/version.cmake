# `qcheck --version` prints the version of project() in the top
# CMakeLists.txt, and exits 0.
# cmake -DQCHECK=path/to/qcheck -DVERSION=x.y.z -P version.cmake
execute_process(COMMAND ${QCHECK} --version RESULT_VARIABLE status OUTPUT_VARIABLE out)
if(NOT status EQUAL 0 OR NOT out STREQUAL "qcheck ${VERSION}\n")
  message(FATAL_ERROR "qcheck --version exited ${status} and printed '${out}', "
                      "not 'qcheck ${VERSION}'")
endif()
