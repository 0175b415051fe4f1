//! A throwaway or local Postgres cluster run from the machine's own binaries (`initdb`, `pg_ctl`).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Why a local cluster could not be started.
#[derive(Debug, thiserror::Error)]
pub enum LocalPostgresError {
    #[error(
        "no Postgres server binaries (initdb, pg_ctl) were found on PATH or under /usr/lib/postgresql/*/bin; install them (e.g. apt-get install postgresql) or set DATABASE_URL"
    )]
    NoBinaries,
    #[error("{step} failed: {detail}")]
    Step { step: &'static str, detail: String },
}

/// A running cluster in `data_dir`, listening on 127.0.0.1 only.
#[derive(Debug)]
pub struct LocalPostgres {
    pub data_dir: PathBuf,
    pub port: u16,
    bin_dir: PathBuf,
}

/// Tuning for a cluster whose data may be lost: tests set `durable` false for speed.
#[derive(Debug, Clone, Copy)]
pub struct ClusterOptions {
    pub durable: bool,
}

/// The folder holding `initdb` and `pg_ctl`: PATH first, then the newest Debian install.
pub fn find_bin_dir() -> Option<PathBuf> {
    let has_tools = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if has_tools(&dir) {
                return Some(dir);
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, dir)| has_tools(dir))
        .collect();
    versions.sort();
    versions.pop().map(|(_, dir)| dir)
}

/// Whether this process runs as root, where `initdb` refuses to run.
fn running_as_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// Whether `path` belongs to the system's `postgres` user.
fn owned_by_postgres(path: &Path) -> bool {
    let Ok(passwd) = std::fs::read_to_string("/etc/passwd") else {
        return false;
    };
    let uid = passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next() == Some("postgres"))
            .then(|| fields.nth(1).and_then(|uid| uid.parse::<u32>().ok()))
            .flatten()
    });
    match (uid, std::fs::metadata(path)) {
        (Some(uid), Ok(metadata)) => metadata.uid() == uid,
        _ => false,
    }
}

/// A free loopback port at the time of asking.
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl LocalPostgres {
    /// Initialises `data_dir` if it is new, then starts the server on `port`.
    pub fn start(
        data_dir: &Path,
        port: u16,
        options: ClusterOptions,
    ) -> Result<LocalPostgres, LocalPostgresError> {
        let bin_dir = find_bin_dir().ok_or(LocalPostgresError::NoBinaries)?;
        let cluster = LocalPostgres {
            data_dir: data_dir.to_path_buf(),
            port,
            bin_dir,
        };
        let created_here = !data_dir.exists();
        std::fs::create_dir_all(data_dir).map_err(|e| LocalPostgresError::Step {
            step: "creating the data folder",
            detail: e.to_string(),
        })?;
        if running_as_root() {
            // Only a folder made here is handed over: another one may hold someone's files.
            if created_here {
                cluster.run(
                    "handing the data folder to the postgres user",
                    Command::new("chown")
                        .args(["-R", "postgres:postgres"])
                        .arg(data_dir),
                )?;
            } else if !owned_by_postgres(data_dir) {
                return Err(LocalPostgresError::Step {
                    step: "using the data folder",
                    detail: format!(
                        "{} exists and does not belong to the postgres user, and only a folder made here is handed to it; give a path that does not exist yet",
                        data_dir.display()
                    ),
                });
            }
        }
        if !data_dir.join("PG_VERSION").exists() {
            let mut initdb = cluster.tool("initdb");
            initdb.arg("-D").arg(data_dir).args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
                "--no-instructions",
            ]);
            cluster.run("initdb", &mut initdb)?;
        }
        let mut server_options = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -k {} -c max_connections=200",
            data_dir.display()
        );
        if !options.durable {
            server_options
                .push_str(" -c fsync=off -c synchronous_commit=off -c full_page_writes=off");
        }
        let mut pg_ctl = cluster.tool("pg_ctl");
        pg_ctl
            .arg("-D")
            .arg(data_dir)
            .arg("-l")
            .arg(data_dir.join("server.log"))
            .args(["-w", "-t", "60", "-o", &server_options, "start"]);
        cluster.run("pg_ctl start", &mut pg_ctl)?;
        Ok(cluster)
    }

    /// Stops a server a previous run left behind in `data_dir`, so it can start afresh.
    pub fn stop_stale(data_dir: &Path) {
        if !data_dir.join("postmaster.pid").exists() {
            return;
        }
        if let Some(bin_dir) = find_bin_dir() {
            let stale = LocalPostgres {
                data_dir: data_dir.to_path_buf(),
                port: 0,
                bin_dir,
            };
            let _ = stale.stop();
        }
    }

    /// A URL for `database` on this cluster as the `postgres` superuser.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Stops the server, waiting for it to finish.
    pub fn stop(&self) -> Result<(), LocalPostgresError> {
        let mut pg_ctl = self.tool("pg_ctl");
        pg_ctl
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-m", "fast", "-w", "stop"]);
        self.run("pg_ctl stop", &mut pg_ctl)
    }

    /// Starts a watcher that stops the server and deletes its folder once process `pid` exits.
    pub fn remove_when_process_exits(&self, pid: u32) -> Result<(), LocalPostgresError> {
        let script = format!(
            "while [ -d /proc/{pid} ]; do sleep 1; done; '{}' -D '{}' -m immediate stop >/dev/null 2>&1; rm -rf '{}'",
            self.bin_dir.join("pg_ctl").display(),
            self.data_dir.display(),
            self.data_dir.display()
        );
        let mut watcher = if running_as_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", "sh", "-c", &script]);
            c
        } else {
            let mut c = Command::new("sh");
            c.args(["-c", &script]);
            c
        };
        watcher
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map(|_| ())
            .map_err(|e| LocalPostgresError::Step {
                step: "starting the cleanup watcher",
                detail: e.to_string(),
            })
    }

    fn tool(&self, name: &str) -> Command {
        let program = self.bin_dir.join(name);
        if running_as_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        }
    }

    fn run(&self, step: &'static str, command: &mut Command) -> Result<(), LocalPostgresError> {
        let output =
            command
                .stdin(Stdio::null())
                .output()
                .map_err(|e| LocalPostgresError::Step {
                    step,
                    detail: e.to_string(),
                })?;
        if output.status.success() {
            return Ok(());
        }
        let mut detail = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        if let Ok(log) = std::fs::read_to_string(self.data_dir.join("server.log")) {
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            detail.push_str("\nserver log: ");
            detail.push_str(&tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
        }
        Err(LocalPostgresError::Step { step, detail })
    }
}

/// A Postgres server URL: `DATABASE_URL` when set, else a throwaway cluster from the machine's
/// binaries in a temporary folder named after `purpose`, removed when this process exits.
///
/// The cluster, when one was started, must be kept alive as long as the URL is used.
pub fn server_from_env_or_throwaway(
    purpose: &str,
    options: ClusterOptions,
) -> Result<(String, Option<LocalPostgres>), LocalPostgresError> {
    if let Ok(url) = std::env::var("DATABASE_URL")
        && !url.trim().is_empty()
    {
        return Ok((url, None));
    }
    let dir = std::env::temp_dir().join(format!("ops-{purpose}-pg-{}", std::process::id()));
    let port = free_port().map_err(|e| LocalPostgresError::Step {
        step: "finding a free port",
        detail: e.to_string(),
    })?;
    let cluster = LocalPostgres::start(&dir, port, options)?;
    cluster.remove_when_process_exits(std::process::id())?;
    Ok((cluster.url("postgres"), Some(cluster)))
}
