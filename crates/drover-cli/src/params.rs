//! `drover param ...`: the parameter database from the command line, through the SDK's
//! blocking client (run off the async runtime).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use clap::Subcommand;
use drover_api::rest::ParamVersion;
use drover_sdk::params::{GetOptions, ParamClient, PushOptions, Query, Which};

use crate::output::{self, Output};

#[derive(Subcommand)]
pub enum ParamCommand {
    /// Every parameter name with its number of versions and the latest.
    List,
    /// The versions of a parameter, or those a query picks.
    Versions {
        name: String,
        /// e.g. `win_rate > 0.8 and games >= 10`
        #[arg(long)]
        filter: Option<String>,
        /// e.g. `-win_rate,version` (a leading `-` sorts descending)
        #[arg(long, allow_hyphen_values = true)]
        sort: Option<String>,
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Tags and the versions they point at.
    Tags { name: String },
    /// Push a file as a new version.
    Push {
        name: String,
        version: i64,
        file: PathBuf,
        /// Tag the version (repeatable).
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// A JSON object, e.g. `{"win_rate": 0.7}`.
        #[arg(long)]
        metadata: Option<String>,
    },
    /// Download a version (`latest`, a number, or `tag:NAME`) into a file.
    Get {
        name: String,
        which: String,
        out: PathBuf,
        /// Wait this many seconds for such a version to exist.
        #[arg(long, default_value_t = 0)]
        wait: u64,
    },
    /// Point a tag at a version (moving it if it exists).
    Tag { name: String, tag: String, version: i64 },
    /// Delete every untagged version but the `--keep-untagged` highest.
    Gc {
        name: String,
        #[arg(long)]
        keep_untagged: u64,
    },
}

fn which(text: &str) -> Result<Which> {
    Ok(match text {
        "latest" => Which::Latest,
        t if t.starts_with("tag:") => Which::Tag(t[4..].to_string()),
        v => Which::Version(v.parse().with_context(|| format!("`{v}` is not `latest`, a version number or `tag:NAME`"))?),
    })
}

pub async fn run(master: &str, command: ParamCommand, output: Output) -> Result<()> {
    let master = master.to_string();
    tokio::task::spawn_blocking(move || run_blocking(&master, command, output)).await?
}

fn run_blocking(master: &str, command: ParamCommand, output: Output) -> Result<()> {
    let client = ParamClient::connect(master)?;
    match command {
        ParamCommand::List => {
            let names = client.list_names()?;
            match output {
                Output::Json => output::print_json(&names),
                Output::Table => {
                    let mut t = comfy_table::Table::new();
                    t.load_style(comfy_table::presets::UTF8_FULL_CONDENSED).set_header(vec!["Name", "Versions", "Latest", "Updated"]);
                    for n in &names {
                        t.add_row(vec![n.name.clone(), n.versions.to_string(), n.latest_version.to_string(), output::time(n.updated_at)]);
                    }
                    println!("{t}");
                }
            }
        }
        ParamCommand::Versions { name, filter, sort, limit } => {
            let versions = if filter.is_some() || sort.is_some() || limit.is_some() {
                let mut q = Query::new();
                if let Some(f) = filter {
                    q = q.filter(f);
                }
                if let Some(s) = sort {
                    q = q.sort(s);
                }
                if let Some(l) = limit {
                    q = q.limit(l);
                }
                client.query(&name, &q)?
            } else {
                client.list_versions(&name)?
            };
            print_versions(&versions, output);
        }
        ParamCommand::Tags { name } => {
            let tags = client.list_tags(&name)?;
            match output {
                Output::Json => output::print_json(&tags),
                Output::Table => {
                    for t in &tags {
                        println!("{}\t{}", t.tag, t.version);
                    }
                }
            }
        }
        ParamCommand::Push { name, version, file, tags, metadata } => {
            let mut options = PushOptions::new();
            for t in tags {
                options = options.tag(t);
            }
            if let Some(m) = metadata {
                let value: serde_json::Value = serde_json::from_str(&m).with_context(|| format!("--metadata: `{m}` is not JSON"))?;
                options = options.metadata(value);
            }
            let pushed = client.push_file(&name, version, &file, &options)?;
            print_versions(&[pushed], output);
        }
        ParamCommand::Get { name, which: selector, out, wait } => {
            let options = if wait > 0 { GetOptions::wait(Duration::from_secs(wait)) } else { GetOptions::now() };
            match client.get_to_file(&name, &which(&selector)?, &options, &out)? {
                Some(got) => match output {
                    Output::Json => output::print_json(
                        &serde_json::json!({"name": name, "version": got.version, "size": got.size, "sha256": got.sha256}),
                    ),
                    Output::Table => {
                        println!("{name} version {} ({} bytes, sha256 {}) -> {}", got.version, got.size, got.sha256, out.display())
                    }
                },
                None => bail!("{name} has no version {selector}"),
            }
        }
        ParamCommand::Tag { name, tag, version } => {
            let t = client.tag(&name, &tag, version)?;
            println!("{name}: {} -> version {}", t.tag, t.version);
        }
        ParamCommand::Gc { name, keep_untagged } => {
            let result = client.gc(&name, keep_untagged)?;
            match output {
                Output::Json => output::print_json(&result),
                Output::Table => println!("{name}: deleted {:?}", result.deleted),
            }
        }
    }
    Ok(())
}

fn print_versions(versions: &[ParamVersion], output: Output) {
    if output == Output::Json {
        return output::print_json(&versions);
    }
    let mut t = comfy_table::Table::new();
    t.load_style(comfy_table::presets::UTF8_FULL_CONDENSED).set_header(vec!["Version", "Size", "Created", "Tags", "Metadata"]);
    for v in versions {
        t.add_row(vec![v.version.to_string(), v.size.to_string(), output::time(v.created_at), v.tags.join(","), v.metadata.to_string()]);
    }
    println!("{t}");
}
