//! What the command-line tests share: the binary, temporary folders that clean up after themselves, and small
//! image folders cut from the embedded data.

#![allow(dead_code)] // each test file uses its own part

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn wgtune() -> Command {
    Command::new(env!("CARGO_BIN_EXE_wgtune"))
}

/// A temporary folder, removed when dropped.
pub struct Dir(pub PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fresh, empty temporary folder named after the test.
pub fn temp_dir(name: &str) -> Dir {
    let dir = std::env::temp_dir().join(format!("wgtune-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    Dir(dir)
}

/// DIR/train/{Trouser,Bag}/ with `train` images each and DIR/valid/... with `valid` each, from the embedded data.
pub fn fashion_folder(dir: &Path, train: usize, valid: usize) {
    let assets = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/fashion_mnist");
    for (split, n) in [("train", train), ("valid", valid)] {
        for class in ["Trouser", "Bag"] {
            let to = dir.join(split).join(class);
            std::fs::create_dir_all(&to).unwrap();
            let mut files: Vec<_> =
                std::fs::read_dir(assets.join(split).join(class)).unwrap().map(|e| e.unwrap().path()).collect();
            files.sort();
            for f in files.iter().take(n) {
                std::fs::copy(f, to.join(f.file_name().unwrap())).unwrap();
            }
        }
    }
}

/// Run a command that must succeed; returns its (stdout, stderr).
pub fn run_ok(cmd: &mut Command) -> (String, String) {
    let out = cmd.output().unwrap();
    let (stdout, stderr) =
        (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    assert!(out.status.success(), "{stdout}\n{stderr}");
    (stdout, stderr)
}

/// The lines of a JSON-lines file (finetune's --json-log).
pub fn json_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}
