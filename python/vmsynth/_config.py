# Where `cmake --install` put libvmsynth.so.0 (absolute path), so that an
# installed vmsynth package loads the library installed with it without
# ldconfig or LD_LIBRARY_PATH. The install step writes this file with the
# real path; in the source tree it is None and the library is found through
# $VMSYNTH_LIBRARY or the dynamic loader's search path (python/CMakeLists.txt).
LIBRARY_PATH = None
