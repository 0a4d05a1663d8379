// Writes the seed corpus of the fuzz targets: small valid overlays (plain and
// encrypted with fuzz_key()) of the launch variants in fuzz_vm.h against its
// base. Usage: make_fuzz_corpus OUT_DIR. Run by scripts/fuzz --regen-corpus;
// the output is committed in fuzz/corpus/.
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

#include "common/error.h"
#include "engine/overlay_creator.h"
#include "fuzz_vm.h"

int main(int argc, char** argv) {
  using namespace vmsynth;
  if (argc != 2) {
    std::fprintf(stderr, "usage: make_fuzz_corpus OUT_DIR\n");
    return 2;
  }
  const std::string out = argv[1];
  const std::string work = out + "/.work";
  try {
    std::filesystem::create_directories(out);
    fuzz::base_vm().write_to(work + "/base");
    for (int v = 0; v < fuzz::kLaunchVariants; ++v) {
      fuzz::launch_vm(v).write_to(work + "/launch" + std::to_string(v));
      for (bool sealed : {false, true}) {
        CreateOptions c;
        c.base_dir = work + "/base";
        c.launch_dir = work + "/launch" + std::to_string(v);
        c.output = out + "/variant" + std::to_string(v) + (sealed ? "-sealed" : "-plain") + ".seed";
        c.level = 3;
        c.threads = 1;
        c.force = true;
        if (sealed) c.key = fuzz::fuzz_key();
        create_overlay(c);
      }
    }
    std::filesystem::remove_all(work);
  } catch (const Error& e) {
    std::fprintf(stderr, "make_fuzz_corpus: %s\n", e.what());
    return 1;
  }
  return 0;
}
