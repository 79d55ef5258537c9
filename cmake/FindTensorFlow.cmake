# FindTensorFlow: TensorFlow's C++ headers and framework library, as the Python interpreter that
# builds fastmoments sees them (custom ops must match that exact TF build).
#
# Asks ${Python_EXECUTABLE} once per configure (not cached: a TF upgrade must be seen) for tf.__version__, tf.sysconfig's
# compile and link flags and the CXX11 ABI flag. Defines
#   TensorFlow_FOUND, TensorFlow_VERSION, TensorFlow_CXX11_ABI_FLAG, TensorFlow_INCLUDE_DIR,
#   TensorFlow_FRAMEWORK_LIBRARY and the imported target TensorFlow::framework.
# TensorFlow not importable (or no interpreter) -> TensorFlow_FOUND is FALSE, nothing else is set.

include(FindPackageHandleStandardArgs)

if(NOT Python_EXECUTABLE)
  set(TensorFlow_FOUND FALSE)
  if(NOT TensorFlow_FIND_QUIETLY)
    message(STATUS "FindTensorFlow: no Python_EXECUTABLE to ask")
  endif()
  return()
endif()

if(NOT DEFINED _FM_TF_QUERY_RESULT)
  # One line: version;abi;compile flags joined by '|';link flags joined by '|'.
  set(_fm_tf_script [=[
import sys
try:
    import tensorflow as tf
except Exception as exc:
    sys.stdout.write("ERROR " + type(exc).__name__ + ": " + str(exc).splitlines()[0] if str(exc) else "ERROR")
    sys.exit(0)
sc = tf.sysconfig
sys.stdout.write(";".join([tf.__version__, str(int(sc.CXX11_ABI_FLAG)),
                           "|".join(sc.get_compile_flags()), "|".join(sc.get_link_flags())]))
]=])
  execute_process(
    COMMAND ${CMAKE_COMMAND} -E env TF_CPP_MIN_LOG_LEVEL=3 ${Python_EXECUTABLE} -c "${_fm_tf_script}"
    OUTPUT_VARIABLE _fm_tf_out
    ERROR_QUIET
    RESULT_VARIABLE _fm_tf_rc
    TIMEOUT 300)
  if(NOT _fm_tf_rc EQUAL 0)
    set(_fm_tf_out "ERROR interpreter exited with ${_fm_tf_rc}")
  endif()
  set(_FM_TF_QUERY_RESULT "${_fm_tf_out}")
endif()

set(_fm_tf_out "${_FM_TF_QUERY_RESULT}")
if(_fm_tf_out MATCHES "^ERROR" OR _fm_tf_out STREQUAL "")
  if(NOT TensorFlow_FIND_QUIETLY)
    message(STATUS "FindTensorFlow: ${Python_EXECUTABLE} cannot import tensorflow (${_fm_tf_out})")
  endif()
  set(TensorFlow_FOUND FALSE)
  return()
endif()

list(GET _fm_tf_out 0 TensorFlow_VERSION)
list(GET _fm_tf_out 1 TensorFlow_CXX11_ABI_FLAG)
list(GET _fm_tf_out 2 _fm_tf_cflags)
list(GET _fm_tf_out 3 _fm_tf_lflags)
string(REPLACE "|" ";" _fm_tf_cflags "${_fm_tf_cflags}")
string(REPLACE "|" ";" _fm_tf_lflags "${_fm_tf_lflags}")

set(TensorFlow_INCLUDE_DIR "")
set(_fm_tf_defs "")
set(_fm_tf_opts "")
foreach(flag IN LISTS _fm_tf_cflags)
  if(flag MATCHES "^-I(.+)")
    set(TensorFlow_INCLUDE_DIR "${CMAKE_MATCH_1}")
  elseif(flag MATCHES "^-D(.+)")
    list(APPEND _fm_tf_defs "${CMAKE_MATCH_1}")
  elseif(flag MATCHES "^-?-std=")
    # The language level comes from CMAKE_CXX_STANDARD (17), not from a raw flag.
  else()
    list(APPEND _fm_tf_opts "${flag}")
  endif()
endforeach()

set(_fm_tf_libdirs "")
set(_fm_tf_libnames "")
foreach(flag IN LISTS _fm_tf_lflags)
  if(flag MATCHES "^-L(.+)")
    list(APPEND _fm_tf_libdirs "${CMAKE_MATCH_1}")
  elseif(flag MATCHES "^-l:(.+)")
    list(APPEND _fm_tf_libnames "${CMAKE_MATCH_1}")
  elseif(flag MATCHES "^-l(.+)")
    list(APPEND _fm_tf_libnames "lib${CMAKE_MATCH_1}.so")
  endif()
endforeach()

# The framework library by its full file name (libtensorflow_framework.so.2): find_library does
# not look for versioned sonames.
set(TensorFlow_FRAMEWORK_LIBRARY "")
foreach(name IN LISTS _fm_tf_libnames)
  foreach(dir IN LISTS _fm_tf_libdirs)
    if(NOT TensorFlow_FRAMEWORK_LIBRARY AND EXISTS "${dir}/${name}")
      set(TensorFlow_FRAMEWORK_LIBRARY "${dir}/${name}")
    endif()
  endforeach()
endforeach()

find_package_handle_standard_args(TensorFlow
  REQUIRED_VARS TensorFlow_INCLUDE_DIR TensorFlow_FRAMEWORK_LIBRARY
  VERSION_VAR TensorFlow_VERSION)

if(TensorFlow_FOUND AND NOT TARGET TensorFlow::framework)
  add_library(TensorFlow::framework SHARED IMPORTED)
  set_target_properties(TensorFlow::framework PROPERTIES
    IMPORTED_LOCATION "${TensorFlow_FRAMEWORK_LIBRARY}"
    IMPORTED_NO_SONAME FALSE)
  # SYSTEM include: TF's and Eigen's headers are not ours to warn about.
  target_include_directories(TensorFlow::framework SYSTEM INTERFACE "${TensorFlow_INCLUDE_DIR}")
  target_compile_definitions(TensorFlow::framework INTERFACE ${_fm_tf_defs})
  if(_fm_tf_opts)
    target_compile_options(TensorFlow::framework INTERFACE ${_fm_tf_opts})
  endif()
endif()
