// Registration of the `vmsynth` subcommands.
//
// Each add_* function adds one command (or command group) to the CLI11 app and
// installs its callback. Callbacks report failures by throwing vmsynth::Error;
// main() turns that into a message on stderr (or a JSON object with --json)
// and an exit status equal to the error code (or throw CommandFailed).
#pragma once

#include <CLI/CLI.hpp>

namespace vmsynth::cli {

void add_gen_pair_command(CLI::App& app);
void add_overlay_commands(CLI::App& app);
void add_synthesize_command(CLI::App& app);
void add_vm_commands(CLI::App& app);
void add_cache_commands(CLI::App& app);
void add_discover_command(CLI::App& app);
void add_push_command(CLI::App& app);

// Thrown by a command that has printed its failure in its own words (push:
// the cloudlet's message and HTTP status); main() exits with `status`.
struct CommandFailed {
  int status;
};

}  // namespace vmsynth::cli
