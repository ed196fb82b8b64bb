//! `genesis run` and its sandboxes on the machine's Docker engine: limits,
//! hardening, timeouts, OOM, fork bombs and floods (`sandbox`), exact
//! resource figures (`resources`), report and patch bombs (`bombs`),
//! snapshots and their layers (`snapshot`, `layers`), environments and the
//! guard on their installs (`environments`, `install_guard`), judging the
//! bundled example (`judging`) and the LLM endpoint of every run (`llm`).
//!
//! Grouped because they need the same things: the engine, the built-in
//! images and, for installs, the package registries. One binary of modules
//! rather than one per file, because each binary links genesis again, which
//! made the suite's build slow on a 2-core CI.
//!
//! Libtest runs two of these tests at once (one per core), as each former
//! file ran its own, so a test now may run beside one of another module.
//! What they share is made for that: every test has homes of its own, and
//! containers, environment keys and labels are a home's; container names
//! carry the process and a counter; `ensure_image` builds under one lock;
//! the install guard's chains keep every home's lines, under a host-wide
//! lock. `resources`, which had a process of its own before, needs none:
//! it compares CPU time with CPU time and the kernel's memory high-water
//! mark of its own cgroup, read once the suite ended, and another test's
//! load changes neither.
//!
//! One module: `cargo test --test sandbox layers::`.

#[path = "../support/mod.rs"]
mod support;

mod bombs;
mod environments;
mod install_guard;
mod judging;
mod layers;
mod llm;
mod resources;
mod sandbox;
mod snapshot;
