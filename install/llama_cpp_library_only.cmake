# Included at the end of llama.cpp's project() call when install.sh builds llama-cpp-python
# (CMAKE_PROJECT_llama.cpp_INCLUDE). llama-cpp-python turns llama.cpp's `common` library on for its
# multimodal library (mtmd); the reduced build has no multimodal library and the Python binding
# loads only libllama and the ggml libraries, so `common` (about 50 C++ files: chat templates,
# argument parsing, JSON schema grammars) is not compiled.
set(LLAMA_BUILD_COMMON OFF CACHE BOOL "llama.cpp: build the common utils library" FORCE)
