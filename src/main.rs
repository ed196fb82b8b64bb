//! The `genesis` binary: all logic lives in the library; see `genesis::cli`.

fn main() {
    std::process::exit(genesis::cli::main());
}
