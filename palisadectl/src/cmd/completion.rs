//! `palisadectl completion`: a shell completion script on stdout.

use std::process::ExitCode;

use anyhow::Result;
use clap::CommandFactory;

use crate::Cli;

/// A shell completion script on stdout.
#[derive(clap::Args)]
#[command(after_help = "Examples:
  source <(palisadectl completion bash)
  palisadectl completion zsh > \"${fpath[1]}/_palisadectl\"
  palisadectl completion fish > ~/.config/fish/completions/palisadectl.fish")]
pub struct Completion {
    /// bash, zsh, fish, elvish or powershell.
    shell: clap_complete::Shell,
}

impl Completion {
    pub fn run(self) -> Result<ExitCode> {
        let Completion { shell } = self;
        clap_complete::generate(
            shell,
            &mut Cli::command(),
            "palisadectl",
            &mut std::io::stdout(),
        );
        Ok(ExitCode::SUCCESS)
    }
}
