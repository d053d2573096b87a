# Finds the onnxruntime C/C++ API headers (the onnxruntime wheel ships none) and sets ORT_INCLUDE_DIR.
# Looks in order at: ORT_INCLUDE_DIR (CMake or environment variable), /usr/include/onnxruntime, and
# else obtains Debian's libonnxruntime-dev (trixie, API version 21) without changing the system,
# through fetch_onnxruntime_headers.sh, which caches it.
set(_ort_header onnxruntime_lite_custom_op.h)
if(NOT ORT_INCLUDE_DIR AND DEFINED ENV{ORT_INCLUDE_DIR})
  set(ORT_INCLUDE_DIR "$ENV{ORT_INCLUDE_DIR}")
endif()
if(ORT_INCLUDE_DIR)
  if(NOT EXISTS "${ORT_INCLUDE_DIR}/${_ort_header}")
    message(FATAL_ERROR "ORT_INCLUDE_DIR=${ORT_INCLUDE_DIR} has no ${_ort_header}")
  endif()
elseif(EXISTS "/usr/include/onnxruntime/${_ort_header}")
  set(ORT_INCLUDE_DIR /usr/include/onnxruntime)
else()
  execute_process(
    COMMAND sh "${CMAKE_CURRENT_LIST_DIR}/fetch_onnxruntime_headers.sh"
    OUTPUT_VARIABLE ORT_INCLUDE_DIR
    RESULT_VARIABLE _ort_fetch_result
    OUTPUT_STRIP_TRAILING_WHITESPACE)
  if(NOT _ort_fetch_result EQUAL 0 OR NOT EXISTS "${ORT_INCLUDE_DIR}/${_ort_header}")
    message(FATAL_ERROR
      "onnx_snn needs the onnxruntime C API headers (version 1.21 or newer) and could not obtain them. "
      "Install Debian's libonnxruntime-dev, or set ORT_INCLUDE_DIR to a folder holding ${_ort_header}.")
  endif()
endif()
file(STRINGS "${ORT_INCLUDE_DIR}/onnxruntime_c_api.h" _ort_api_line REGEX "^#define ORT_API_VERSION [0-9]+")
string(REGEX MATCH "[0-9]+" ORT_API_VERSION "${_ort_api_line}")
if(ORT_API_VERSION LESS 21)
  message(FATAL_ERROR "the onnxruntime headers in ${ORT_INCLUDE_DIR} are API version ${ORT_API_VERSION}; 21 or newer is needed")
endif()
message(STATUS "onnxruntime headers: ${ORT_INCLUDE_DIR} (API version ${ORT_API_VERSION})")
