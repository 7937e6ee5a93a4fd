//! Following a server job (repair, scrub, pvmove) until it ends, with a
//! progress bar on a terminal.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::api::client::Client;
use crate::api::{JobState, JobStatus};

const POLL: Duration = Duration::from_millis(200);

/// Polls job `started` until it ends; returns its last status, or the
/// error that stopped the polling.
pub async fn follow(client: &Client, started: JobStatus) -> Result<JobStatus, String> {
    // Hidden when stderr is not a terminal (scripts, tests).
    let bar = ProgressBar::new(10_000);
    bar.set_style(
        ProgressStyle::with_template("  {msg} [{bar:40}] {percent}% ({elapsed})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(format!("{} {}", started.target, started.kind.name()));
    let mut status = started;
    while status.state == JobState::Running {
        bar.set_position((status.percent() * 100.0) as u64);
        tokio::time::sleep(POLL).await;
        status = client
            .get(&format!("/v1/jobs/{}", status.id))
            .await
            .map_err(|e| e.message)?;
    }
    bar.finish_and_clear();
    Ok(status)
}
