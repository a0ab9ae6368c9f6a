//! The seed's quick example, as its README shows it: `create_agent()` with no arguments, a
//! local `tools/data_analysis.py` (pandas), and a CSV file. Its own test binary, because
//! `create_agent()` reads the current directory (`./tools`) and `$AGENTKERNEL_CONFIG`.

use agentkernel_testkit::test_python;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_agent_runs_the_seed_example_from_the_current_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    std::fs::create_dir_all(root.join("tools")).expect("tools dir");
    std::fs::create_dir_all(root.join("workspace")).expect("workspace dir");
    std::fs::write(
        root.join("tools/data_analysis.py"),
        "import pandas as pd\n\ndef load_dataset(path):\n    \"\"\"Loads a CSV of the workspace.\"\"\"\n    return pd.read_csv('/workspace/' + path)\n",
    )
    .expect("tool module");
    std::fs::write(
        root.join("workspace/large_file.csv"),
        "a,b\n1,10\n2,20\n3,30\n",
    )
    .expect("csv");
    // The config names the interpreter (a venv with pandas) and the workspace; `./tools` is
    // found by convention. The config is named by $AGENTKERNEL_CONFIG: a file in the current
    // directory is never read implicitly.
    std::fs::write(
        root.join("agentkernel.toml"),
        format!(
            "[sandbox]\npython = {:?}\nworkspace = \"workspace\"\n",
            test_python().to_string_lossy()
        ),
    )
    .expect("config");
    std::env::set_current_dir(root).expect("chdir");
    // SAFETY: this test binary has one test and sets the variable before any thread reads it.
    unsafe { std::env::set_var("AGENTKERNEL_CONFIG", "agentkernel.toml") };

    let agent = agentkernel::create_agent().expect("agent");
    let result = agent
        .execute_task(
            "import pandas as pd\n\
             from tools.data_analysis import load_dataset\n\
             df = load_dataset('large_file.csv')\n\
             summary = df.describe()\n\
             print(summary.loc['mean'].tolist())\n",
        )
        .await
        .expect("task");
    assert!(result.success, "{}", result.stderr);
    assert_eq!(result.output, "[2.0, 20.0]\n");
}
