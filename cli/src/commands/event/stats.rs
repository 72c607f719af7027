//! `event stats`: what each readable channel stores.

use crate::{
    context::Context,
    error::Result,
    output::{self, opt_cell, print_json, sanitize},
};

pub(super) const EXAMPLES: &str = "Examples:
  core4ctl event stats
  core4ctl event stats -o json | jq '.[] | select(.count > 1000000)'";

/// One channel's row of `GET /event/stats`.
#[derive(Debug, serde::Deserialize, serde::Serialize)]
struct ChannelStats {
    channel: String,
    count: i64,
    #[serde(default)]
    oldest: Option<String>,
    #[serde(default)]
    newest: Option<String>,
    bytes: i64,
    #[serde(default)]
    pruned_through: Option<String>,
}

pub(super) async fn run(ctx: &Context) -> Result<()> {
    let rows: Vec<ChannelStats> = ctx.client()?.get("/event/stats", &[]).await?;
    if ctx.json() {
        return print_json(&rows);
    }
    if rows.is_empty() {
        eprintln!("no messages stored");
        return Ok(());
    }
    let mut table = output::table(&[
        "CHANNEL",
        "MESSAGES",
        "OLDEST",
        "NEWEST",
        "BYTES",
        "PRUNED THROUGH",
    ]);
    for r in &rows {
        table.add_row(vec![
            sanitize(&r.channel).into_owned(),
            r.count.to_string(),
            opt_cell(r.oldest.as_deref()),
            opt_cell(r.newest.as_deref()),
            r.bytes.to_string(),
            opt_cell(r.pruned_through.as_deref()),
        ]);
    }
    output::print_table(&table)
}
