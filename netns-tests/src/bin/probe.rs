//! The lab's helper executable: `probe send|reflect|wanem …` (see `tandem_netns_tests::helper`).

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match tandem_netns_tests::helper::helper_main(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            #[allow(clippy::print_stderr)]
            {
                eprintln!("probe: {e}");
            }
            ExitCode::FAILURE
        }
    }
}
