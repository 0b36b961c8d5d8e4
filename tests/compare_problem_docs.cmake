# Fails when docs/problems.md differs from `qcheck --list-problems=markdown`.
execute_process(COMMAND ${QCHECK} --list-problems=markdown OUTPUT_VARIABLE generated RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "qcheck --list-problems=markdown failed: ${rc}")
endif()
file(READ ${DOC} committed)
if(NOT generated STREQUAL committed)
  message(FATAL_ERROR "docs/problems.md is out of date: regenerate it with "
                      "`qcheck --list-problems=markdown > docs/problems.md`")
endif()
