//! What a person sees of an upload and of a build's layers on a terminal, in a log, and with
//! `--quiet`.

use super::*;

const MIB: u64 = 1 << 20;

/// What a person sees of an upload of at most 400 MiB that started 100 s ago (so its rate is
/// steady here) and goes through `steps`; `interval` replaces the mode's between lines.
fn upload_shown(
    mode: ProgressMode,
    interval: Option<Duration>,
    steps: impl FnOnce(&UploadProgress<&mut Vec<u8>>),
) -> String {
    let mut out = Vec::new();
    {
        let mut upload = UploadProgress::new(ProgressLine::new(mode, &mut out), 400 * MIB);
        upload.started = Instant::now()
            .checked_sub(Duration::from_secs(100))
            .expect("a clock 100 s old");
        if let Some(interval) = interval {
            upload.line.interval = interval;
        }
        steps(&upload);
    }
    text(out)
}

/// Two chunks of 100 MiB, then the end of the upload.
fn two_chunks(upload: &UploadProgress<&mut Vec<u8>>) {
    upload.add(100 * MIB);
    upload.add(100 * MIB);
    upload.finish();
}

/// The layers of a build of three layers (6 MiB of tar), the third already in the registry,
/// ready out of order, as `mode` shows them.
fn three_layers(mode: ProgressMode) -> String {
    let mut out = Vec::new();
    {
        let layers = LayerProgress::new(ProgressLine::new(mode, &mut out));
        layers.layers_planned(3, 6 * MIB);
        layers.layer_done(0, 2 * MIB, false);
        layers.layer_done(2, MIB, true);
        layers.layer_done(1, 3 * MIB, false);
        layers.finish();
    }
    text(out)
}

fn text(out: Vec<u8>) -> String {
    String::from_utf8(out).expect("progress is UTF-8")
}

#[test]
fn on_a_terminal_an_upload_redraws_one_line_and_ends_it_when_done() {
    assert_eq!(
        upload_shown(ProgressMode::Terminal, Some(Duration::ZERO), two_chunks),
        "\rimagebuild: uploaded 100.0 MiB of 400.0 MiB (1.0 MiB/s)\
         \rimagebuild: uploaded 200.0 MiB of 400.0 MiB (2.0 MiB/s)\n"
    );
}

#[test]
fn without_a_terminal_an_upload_writes_a_plain_line_at_most_every_two_seconds_and_a_last_one() {
    assert_eq!(
        upload_shown(ProgressMode::Plain, None, two_chunks),
        "imagebuild: uploaded 200.0 MiB of 400.0 MiB (2.0 MiB/s)\n",
        "chunks within two seconds make no line of their own"
    );
}

#[test]
fn without_a_terminal_each_interval_gets_a_line_and_the_last_is_not_repeated() {
    assert_eq!(
        upload_shown(ProgressMode::Plain, Some(Duration::ZERO), two_chunks),
        "imagebuild: uploaded 100.0 MiB of 400.0 MiB (1.0 MiB/s)\n\
         imagebuild: uploaded 200.0 MiB of 400.0 MiB (2.0 MiB/s)\n"
    );
}

#[test]
fn a_retried_upload_counts_its_bytes_once() {
    let shown = upload_shown(ProgressMode::Plain, None, |upload| {
        upload.add(100 * MIB);
        upload.rewind(100 * MIB);
        upload.add(100 * MIB);
        upload.finish();
    });
    assert_eq!(
        shown,
        "imagebuild: uploaded 100.0 MiB of 400.0 MiB (1.0 MiB/s)\n"
    );
}

#[test]
fn on_a_terminal_the_layers_are_counted_on_one_line() {
    assert_eq!(
        three_layers(ProgressMode::Terminal),
        "\rimagebuild: layers 0/3 (0 B of 6.0 MiB)\
         \rimagebuild: layers 1/3 (2.0 MiB of 6.0 MiB)\
         \rimagebuild: layers 2/3 (3.0 MiB of 6.0 MiB, 1 reused)\
         \rimagebuild: layers 3/3 (6.0 MiB of 6.0 MiB, 1 reused)\n"
    );
}

#[test]
fn without_a_terminal_each_finished_layer_gets_a_plain_line() {
    assert_eq!(
        three_layers(ProgressMode::Plain),
        "imagebuild: layers 1/3 (2.0 MiB of 6.0 MiB)\n\
         imagebuild: layers 2/3 (3.0 MiB of 6.0 MiB, 1 reused)\n\
         imagebuild: layers 3/3 (6.0 MiB of 6.0 MiB, 1 reused)\n"
    );
}

#[test]
fn quiet_shows_neither_uploads_nor_layers() {
    assert_eq!(
        upload_shown(ProgressMode::Quiet, Some(Duration::ZERO), two_chunks),
        ""
    );
    assert_eq!(three_layers(ProgressMode::Quiet), "");
}

#[test]
fn layers_reported_without_a_plan_are_counted_alone() {
    let mut out = Vec::new();
    {
        let layers = LayerProgress::new(ProgressLine::new(ProgressMode::Plain, &mut out));
        layers.layer_done(0, 2 * MIB, false);
    }
    assert_eq!(text(out), "imagebuild: layers 1 (2.0 MiB)\n");
}

#[test]
fn a_build_that_reports_no_layers_shows_nothing() {
    let mut out = Vec::new();
    LayerProgress::new(ProgressLine::new(ProgressMode::Terminal, &mut out)).finish();
    assert_eq!(text(out), "");
}

#[test]
fn a_shorter_line_on_a_terminal_covers_the_longer_one_before_it() {
    let mut out = Vec::new();
    {
        let line = ProgressLine::new(ProgressMode::Terminal, &mut out);
        line.show("a longer line");
        line.show("short");
    }
    assert_eq!(
        text(out),
        "\rimagebuild: a longer line\rimagebuild: short        \n"
    );
}

#[test]
fn a_terminal_line_left_open_by_a_failure_is_ended_so_the_error_starts_its_own() {
    let shown = upload_shown(ProgressMode::Terminal, Some(Duration::ZERO), |upload| {
        upload.add(100 * MIB);
        // The push fails here: no finish.
    });
    assert_eq!(
        shown,
        "\rimagebuild: uploaded 100.0 MiB of 400.0 MiB (1.0 MiB/s)\n"
    );
}
