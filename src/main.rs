//! The `wgtune` command line: a thin layer over the library (built with the default `cli` feature).

use std::process::ExitCode;

use clap::Parser;

mod cli;

use cli::args::Command;

#[derive(Parser)]
#[command(name = "wgtune", version, about = "Fine-tune pretrained image models on any GPU, through wgpu")]
struct Cli {
    /// Adapter to use: a substring of its name, or a backend (vulkan, metal, dx12, gl).
    #[arg(long, global = true, env = "WGTUNE_ADAPTER")]
    adapter: Option<String>,
    #[command(subcommand)]
    command: Command,
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Info { json } => cli::bench::info(&cli::bench::open_gpu(cli.adapter, false)?, json),
        Command::Bench { what } => cli::bench::bench(cli.adapter, what),
        Command::Predict(args) => cli::predict::predict(cli.adapter, args),
        Command::Export(args) => cli::predict::export(args),
        Command::Finetune(args) => cli::train::finetune(cli.adapter, args),
        Command::LrFind(args) => cli::train::lr_find(cli.adapter, args),
    }
}

fn main() -> ExitCode {
    // Warnings and errors, less the Vulkan loader's own messages while wgpu looks for drivers: with none installed
    // wgtune falls back to OpenGL (or says how to get a driver), and "Found no drivers!" would only alarm. RUST_LOG
    // overrides all of it.
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn,wgpu_hal::vulkan::instance=off"))
        .init();
    // A bad option is an error like any other (exit 1), with clap's message naming the option; --help and
    // --version print and succeed.
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::FAILURE } else { ExitCode::SUCCESS };
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => match e.downcast_ref::<wgtune::Error>() {
            Some(wgtune::Error::Interrupted(msg)) => {
                eprintln!("{msg}");
                ExitCode::from(130)
            }
            _ => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
    }
}
