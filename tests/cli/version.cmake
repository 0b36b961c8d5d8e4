# `qcheck --version` prints the version of project() in the top
# CMakeLists.txt, and exits 0; the manual page's title line names the same.
# cmake -DQCHECK=path/to/qcheck -DVERSION=x.y.z -DMANPAGE=docs/qcheck.1 -P version.cmake
execute_process(COMMAND ${QCHECK} --version RESULT_VARIABLE status OUTPUT_VARIABLE out)
if(NOT status EQUAL 0 OR NOT out STREQUAL "qcheck ${VERSION}\n")
  message(FATAL_ERROR "qcheck --version exited ${status} and printed '${out}', "
                      "not 'qcheck ${VERSION}'")
endif()
file(STRINGS ${MANPAGE} title REGEX "^\\.TH ")
string(REPLACE "." "\\." version_regex "${VERSION}")
if(NOT title MATCHES "\"qcheck ${version_regex}\"")
  message(FATAL_ERROR "${MANPAGE}: the title line '${title}' does not name qcheck ${VERSION}")
endif()
