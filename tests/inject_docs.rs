//! The flag table of `portcullis inject` in `docs/deploy.md` lists every flag with its
//! environment variable, as the code defines them.

use anyhow::{Context, Result};
use clap::{CommandFactory, Parser};
use portcullis::inject::InjectArgs;

#[derive(Debug, Parser)]
struct Cli {
    #[command(flatten)]
    args: InjectArgs,
}

#[test]
fn every_inject_flag_is_documented_with_its_environment_variable() -> Result<()> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/deploy.md");
    let docs = std::fs::read_to_string(path).context("reading docs/deploy.md")?;
    let command = Cli::command();
    let mut checked = 0;
    for arg in command.get_arguments() {
        let (Some(long), Some(env)) = (arg.get_long(), arg.get_env()) else {
            continue;
        };
        let env = env.to_string_lossy();
        let row = format!("| `--{long}` | `{env}` |");
        assert!(
            docs.contains(&row),
            "docs/deploy.md lacks the row starting {row}"
        );
        assert_eq!(
            env,
            format!("PORTCULLIS_{}", long.to_uppercase().replace('-', "_"))
        );
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} flags found");
    Ok(())
}
