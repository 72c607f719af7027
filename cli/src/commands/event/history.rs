//! `event history`: one page of a channel's stored messages.

use clap::Args;

use super::input::channel_name;
use crate::{
    client::Event,
    context::Context,
    error::Result,
    output::{self, datetime_cell, display_value, opt_cell, print_json, sanitize},
};

pub(super) const EXAMPLES: &str = "\
Examples:
  core4ctl event history message                  # newest first
  core4ctl event history message --page 2 --per-page 50
  core4ctl event history ops -o json | jq -r '.[].data'";

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// Channel name
    pub channel: String,
    /// Page number, from 1 (page 1 holds the newest messages)
    #[arg(long, default_value_t = 1, value_parser = crate::commands::page_number)]
    pub page: u64,
    /// Messages per page
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub per_page: u64,
}

pub(super) async fn run(args: &HistoryArgs, ctx: &Context) -> Result<()> {
    let channel = channel_name(&args.channel)?;
    let client = ctx.client()?;
    let query = [
        ("channel", channel.clone()),
        ("page", (args.page - 1).to_string()),
        ("per_page", args.per_page.to_string()),
    ];
    let page = client.get_page::<Event>("/event/history", &query).await?;
    if ctx.json() {
        return print_json(&page.data);
    }
    if let Some(first) = &page.truncated_before {
        eprintln!(
            "messages on {} before {first} are no longer stored (retention)",
            sanitize(&channel)
        );
    }
    if page.data.is_empty() {
        if page.total_count > 0 {
            eprintln!(
                "page {} is past the end: {} has {} messages, on {} page(s) of {}",
                args.page,
                sanitize(&channel),
                page.total_count,
                page.page_count,
                page.per_page
            );
        } else {
            eprintln!("no messages on {}", sanitize(&channel));
        }
        return Ok(());
    }
    let mut table = output::table(&["ID", "TIME", "AUTHOR", "TEXT"]);
    for event in &page.data {
        table.add_row(vec![
            opt_cell(event.id.as_deref()),
            datetime_cell(event.created.as_deref()),
            opt_cell(event.author.as_deref()),
            display_value(&event.data),
        ]);
    }
    output::print_table(&table)?;
    if page.page_count > 1 {
        eprintln!(
            "page {} of {} ({} messages, newest first); next: --page {}",
            page.page + 1,
            page.page_count,
            page.total_count,
            (page.page + 2).min(page.page_count)
        );
    }
    Ok(())
}
