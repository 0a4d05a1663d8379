// Placeholder registration until the vm command group lands (issue 5).
#include "cli/commands.h"

namespace vmsynth::cli {
void add_vm_commands(CLI::App&) {}
}  // namespace vmsynth::cli
