//! `curvops`: curvature of neural networks from the command line (SPEC.md §5).
//!
//! Errors are printed as one line naming the file, key, layer or flag at fault, with a
//! non-zero exit status; a panic is reported the same way (never a trace).

// Index loops over several arrays are the clearest form for numerical kernels.
#![allow(clippy::needless_range_loop, clippy::too_many_arguments)]

mod alloc;
mod args;
mod commands;
mod common;
mod output;

use clap::Parser;

#[global_allocator]
static GLOBAL: alloc::Counting = alloc::Counting;

fn main() {
    // the CLI owns its process: keep up to 1 GiB of freed memory for reuse (curvops_tensor::alloc)
    curvops_tensor::alloc::retain_freed_memory(32 << 20, 1 << 30);
    std::panic::set_hook(Box::new(|info| {
        let msg = if let Some(s) = info.payload().downcast_ref::<&str>() {
            s.to_string()
        } else if let Some(s) = info.payload().downcast_ref::<String>() {
            s.clone()
        } else {
            "unknown panic".to_string()
        };
        let loc = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        eprintln!("error: internal error: {}{loc} (please report this)", msg.lines().next().unwrap_or(""));
    }));
    let cli = match args::Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            match e.kind() {
                ErrorKind::DisplayHelp
                | ErrorKind::DisplayVersion
                | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                    let _ = e.print();
                    std::process::exit(0);
                }
                _ => {
                    let text = e.to_string();
                    let line = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("invalid arguments");
                    let line = line.trim_start_matches("error: ");
                    eprintln!("error: {line}");
                    std::process::exit(2);
                }
            }
        }
    };
    let result = std::panic::catch_unwind(|| commands::run(cli));
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
        Err(_) => std::process::exit(101),
    }
}
