//! `palisadectl demo`: evaluate the seed scenarios embedded in the binary.

use std::process::ExitCode;

use anyhow::Result;
use palisadectl::demo;
use palisadectl::output::Output;

/// Evaluate the seed scenarios embedded in this binary (the microservices chain behind
/// default deny, and the others under examples/): no cluster and no files needed.
#[derive(clap::Args)]
pub struct Demo {
    /// Output format of the matrices.
    #[arg(short, long, value_enum, default_value = "table")]
    output: Output,
}

impl Demo {
    pub fn run(self) -> Result<ExitCode> {
        let Demo { output } = self;
        print!("{}", output.render(demo::run(output.structured())?));
        Ok(ExitCode::SUCCESS)
    }
}
