//! Configuration layering, validation messages, and secrets kept out of sight.

use std::path::Path;

use openai_project_sync::config::{ConfigError, Settings, Sources};
use secrecy::ExposeSecret;

use crate::helpers::{output_text, run_binary};

fn env(vars: &[(&str, &str)]) -> Option<Vec<(String, String)>> {
    Some(
        vars.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

fn load(dir: &Path, file: Option<&Path>, vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
    Settings::load(&Sources {
        config_dir: Some(dir.to_path_buf()),
        file: file.map(Path::to_path_buf),
        env: env(vars),
    })
}

/// A folder of its own for one test, removed when dropped.
struct TempDir(std::path::PathBuf);

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp_dir(name: &str) -> TempDir {
    let dir = std::env::temp_dir().join(format!("ops-config-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    TempDir(dir)
}

#[test]
fn built_in_defaults_match_the_contract() {
    let settings = load(&temp_dir("defaults"), None, &[]).expect("defaults are valid");

    assert_eq!(settings.openai.base_url, "https://api.openai.com/v1");
    assert_eq!(settings.openai.page_size, 100);
    assert_eq!(settings.sync.schedule, "0 */10 * * * *");
    assert_eq!(settings.http.listen, "127.0.0.1:9187");
    assert!(settings.openai.admin_key.is_none());
}

#[test]
fn the_shipped_default_toml_is_valid_and_holds_no_secret() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let text = std::fs::read_to_string(dir.join("default.toml")).expect("config/default.toml");

    load(&dir, None, &[]).expect("config/default.toml loads");
    assert!(
        !text
            .lines()
            .any(|l| l.trim_start().starts_with("admin_key ="))
    );
    assert!(!text.lines().any(|l| l.trim_start().starts_with("url =")));
}

#[test]
fn layers_apply_in_order_defaults_files_conventional_variables_then_app_variables() {
    let dir = temp_dir("layers");
    std::fs::write(
        dir.join("default.toml"),
        "[openai]\npage_size = 10\ntimeout = \"10s\"\nmax_retries = 1\n",
    )
    .expect("write");
    std::fs::write(
        dir.join("local.toml"),
        "[openai]\npage_size = 20\ntimeout = \"20s\"\n",
    )
    .expect("write");
    let extra = dir.join("extra.toml");
    std::fs::write(&extra, "[openai]\npage_size = 30\n").expect("write");

    let files_only = load(&dir, Some(&extra), &[]).expect("valid");
    let with_env = load(
        &dir,
        Some(&extra),
        &[
            ("APP_OPENAI__PAGE_SIZE", "40"),
            ("OPENAI_BASE_URL", "http://127.0.0.1:9/v1"),
            ("DATABASE_URL", "postgres://conventional@127.0.0.1/a"),
            ("APP_DATABASE__URL", "postgres://specific@127.0.0.1/b"),
        ],
    )
    .expect("valid");

    assert_eq!(
        files_only.openai.max_retries, 1,
        "default.toml over built-ins"
    );
    assert_eq!(
        files_only.openai.timeout,
        std::time::Duration::from_secs(20),
        "local.toml over default.toml"
    );
    assert_eq!(files_only.openai.page_size, 30, "--config over local.toml");
    assert_eq!(with_env.openai.page_size, 40, "APP_ over files");
    assert_eq!(with_env.openai.base_url, "http://127.0.0.1:9/v1");
    let url = with_env.database_url().expect("url");
    assert_eq!(
        url.expose_secret(),
        "postgres://specific@127.0.0.1/b",
        "APP_ over the conventional name"
    );
}

fn invalid_message(vars: &[(&str, &str)]) -> String {
    load(&temp_dir("invalid"), None, vars)
        .expect_err("must be refused")
        .to_string()
}

#[test]
fn bad_values_are_refused_with_the_key_and_the_fix() {
    let five_fields = invalid_message(&[("APP_SYNC__SCHEDULE", "*/10 * * * *")]);
    let zero = invalid_message(&[("APP_OPENAI__PAGE_SIZE", "0")]);
    let too_many = invalid_message(&[("APP_OPENAI__PAGE_SIZE", "101")]);
    let url = invalid_message(&[("OPENAI_BASE_URL", "not a url")]);
    let nonsense_cron = invalid_message(&[("APP_SYNC__SCHEDULE", "0 */99 * * * nonsense")]);
    let timeout = invalid_message(&[("APP_OPENAI__TIMEOUT", "soon")]);

    assert!(
        five_fields.contains("sync.schedule")
            && five_fields.contains("5 fields")
            && five_fields.contains("seconds first"),
        "{five_fields}"
    );
    assert!(
        zero.contains("openai.page_size") && zero.contains("1 to 100"),
        "{zero}"
    );
    assert!(too_many.contains("openai.page_size"), "{too_many}");
    assert!(
        url.contains("openai.base_url") && url.contains("https://api.openai.com/v1"),
        "{url}"
    );
    assert!(nonsense_cron.contains("sync.schedule"), "{nonsense_cron}");
    assert!(timeout.contains("openai.timeout"), "{timeout}");
}

#[test]
fn the_admin_key_comes_from_the_environment_or_a_key_file() {
    let dir = temp_dir("keyfile");
    let key_file = dir.join("admin-key");
    std::fs::write(&key_file, "sk-admin-from-file-placeholder\n").expect("write");
    let path = key_file.to_string_lossy().to_string();

    let from_env = load(
        &dir,
        None,
        &[("OPENAI_ADMIN_KEY", "sk-admin-env-placeholder")],
    )
    .expect("valid");
    let from_app = load(
        &dir,
        None,
        &[("APP_OPENAI__ADMIN_KEY", "sk-admin-app-placeholder")],
    )
    .expect("valid");
    let from_file =
        load(&dir, None, &[("APP_OPENAI__ADMIN_KEY_FILE", path.as_str())]).expect("valid");
    let missing = load(&dir, None, &[]).expect("valid");
    let missing_file = load(
        &dir,
        None,
        &[("APP_OPENAI__ADMIN_KEY_FILE", "/nonexistent/key")],
    )
    .expect("valid");

    assert_eq!(
        from_env.admin_key().expect("key").expose_secret(),
        "sk-admin-env-placeholder"
    );
    assert_eq!(
        from_app.admin_key().expect("key").expose_secret(),
        "sk-admin-app-placeholder"
    );
    assert_eq!(
        from_file.admin_key().expect("key").expose_secret(),
        "sk-admin-from-file-placeholder"
    );
    assert!(matches!(
        missing.admin_key(),
        Err(ConfigError::MissingAdminKey)
    ));
    assert!(
        missing_file
            .admin_key()
            .expect_err("unreadable")
            .to_string()
            .contains("/nonexistent/key")
    );
}

#[test]
fn secrets_never_show_in_debug_output() {
    let canary = "sk-admin-CANARY-debug-0000";
    let settings = load(
        &temp_dir("debug"),
        None,
        &[
            ("OPENAI_ADMIN_KEY", canary),
            ("DATABASE_URL", "postgres://u:CANARYPASSWORD@127.0.0.1/db"),
        ],
    )
    .expect("valid");

    let debug = format!("{settings:?} {:?}", settings.admin_key());

    assert!(!debug.contains("CANARY"), "{debug}");
}

#[test]
fn the_binary_exits_2_on_bad_configuration_and_names_the_key() {
    let dir = temp_dir("binary");
    let dir_arg = dir.to_string_lossy().to_string();
    let output = run_binary(
        &["check", "--config-dir", &dir_arg],
        &[
            ("APP_OPENAI__PAGE_SIZE", "101"),
            ("OPENAI_ADMIN_KEY", "sk-admin-placeholder"),
        ],
    );
    let five = run_binary(
        &["check", "--config-dir", &dir_arg],
        &[("APP_SYNC__SCHEDULE", "0 * * * *")],
    );
    let missing_file = run_binary(&["check", "--config", "/nonexistent/extra.toml"], &[]);
    let usage = run_binary(&["frobnicate"], &[]);

    assert_eq!(output.status.code(), Some(2), "{}", output_text(&output));
    assert!(output_text(&output).contains("openai.page_size"));
    assert_eq!(five.status.code(), Some(2));
    assert!(output_text(&five).contains("5 fields"));
    assert_eq!(missing_file.status.code(), Some(2));
    assert!(output_text(&missing_file).contains("/nonexistent/extra.toml"));
    assert_eq!(usage.status.code(), Some(2));
}

#[test]
fn each_unusable_value_is_refused_naming_its_key() {
    let cases = [
        (
            "APP_DATABASE__MAX_CONNECTIONS",
            "2",
            "database.max_connections",
            "LISTEN",
        ),
        (
            "APP_REQUESTS__POLL_INTERVAL",
            "0s",
            "requests.poll_interval",
            "e.g.",
        ),
        (
            "APP_OPENAI__RETRY_BASE_DELAY",
            "1m",
            "openai.retry_base_delay",
            "retry_max_delay",
        ),
        ("APP_LOG__LEVEL", "loud", "log.level", "debug"),
        (
            "APP_OPENAI__TIMEOUT",
            "soon",
            "openai.timeout",
            "a bare number means seconds",
        ),
    ];
    for (variable, value, key, fix) in cases {
        let message = invalid_message(&[(variable, value)]);
        assert!(
            message.contains(key) && message.contains(fix),
            "{variable}={value}: {message}"
        );
    }
}

#[test]
fn durations_that_are_negative_not_numbers_or_too_long_to_compute_with_are_refused() {
    let cases = [
        ("APP_OPENAI__TIMEOUT", "1e19", "openai.timeout"),
        ("APP_OPENAI__TIMEOUT", "600000000000y", "openai.timeout"),
        (
            "APP_REQUESTS__RECONCILE_GRACE",
            "1e15",
            "requests.reconcile_grace",
        ),
        (
            "APP_OPENAI__RETRY_MAX_DELAY",
            "2y",
            "openai.retry_max_delay",
        ),
        (
            "APP_REQUESTS__POLL_INTERVAL",
            "-5s",
            "requests.poll_interval",
        ),
        (
            "APP_REQUESTS__POLL_INTERVAL",
            "-5",
            "requests.poll_interval",
        ),
        (
            "APP_REQUESTS__POLL_INTERVAL",
            "NaN",
            "requests.poll_interval",
        ),
        (
            "APP_REQUESTS__POLL_INTERVAL",
            "inf",
            "requests.poll_interval",
        ),
    ];
    for (variable, value, key) in cases {
        let message = invalid_message(&[(variable, value)]);
        assert!(message.contains(key), "{variable}={value}: {message}");
    }
    let settings = load(
        &temp_dir("long-durations"),
        None,
        &[
            ("APP_OPENAI__TIMEOUT", "1e3"),
            ("APP_REQUESTS__RECONCILE_GRACE", "365d"),
        ],
    )
    .expect("a year at most is accepted");
    assert_eq!(
        settings.openai.timeout,
        std::time::Duration::from_secs(1000)
    );
}

#[test]
fn durations_are_parsed_once_into_typed_settings() {
    let settings = load(
        &temp_dir("durations"),
        None,
        &[
            ("APP_OPENAI__TIMEOUT", "1m 30s"),
            ("APP_REQUESTS__POLL_INTERVAL", "250ms"),
            ("APP_REQUESTS__RECONCILE_GRACE", "90"),
        ],
    )
    .expect("valid durations");

    assert_eq!(settings.openai.timeout, std::time::Duration::from_secs(90));
    assert_eq!(
        settings.requests.poll_interval,
        std::time::Duration::from_millis(250)
    );
    assert_eq!(
        settings.requests.reconcile_grace,
        std::time::Duration::from_secs(90),
        "a bare number is seconds"
    );
}

#[test]
fn app_variables_naming_no_key_are_ignored_but_unknown_keys_in_files_are_errors() {
    let dir = temp_dir("stray");
    let settings = load(
        &dir,
        None,
        &[
            ("APP_SERVICE_HOST", "10.0.0.1"),
            ("APP_OPENAI__PAGESIZE", "5"),
            ("APP_OPENAI__PAGE_SIZE", "50"),
        ],
    )
    .expect("stray variables do not stop the daemon");
    assert_eq!(settings.openai.page_size, 50);
    assert_eq!(
        settings.ignored_variables,
        ["APP_OPENAI__PAGESIZE", "APP_SERVICE_HOST"]
    );

    std::fs::write(dir.join("local.toml"), "[openai]\npagesize = 5\n").expect("write");
    let in_file = load(&dir, None, &[]).expect_err("an unknown key in a file is refused");
    assert!(
        in_file.to_string().contains("pagesize") && in_file.to_string().contains("unknown field"),
        "{in_file}"
    );
}

#[test]
fn a_configuration_file_that_does_not_parse_is_refused_without_echoing_its_lines() {
    let dir = temp_dir("unparsable");
    for (name, text) in [
        (
            "unquoted.toml",
            "[openai]\nadmin_key = sk-admin-CANARY-placeholder\n",
        ),
        (
            "other-key.toml",
            "[database]\nurl = postgres://u:CANARY@h/db\n",
        ),
    ] {
        let file = dir.join(name);
        std::fs::write(&file, text).expect("write");

        let refused = load(&dir, Some(&file), &[]).expect_err("refused");

        let message = refused.to_string();
        assert!(!message.contains("CANARY"), "{name}: {message}");
        assert!(message.contains(name), "{name} names the file: {message}");
    }
}

#[test]
fn an_admin_key_in_a_configuration_file_is_refused_without_echoing_it() {
    let dir = temp_dir("key-in-file");
    let extra = dir.join("extra.toml");
    std::fs::write(
        &extra,
        "[openai]\nadmin_key = \"sk-admin-CANARY-placeholder\"\n",
    )
    .expect("write");

    let refused = load(&dir, Some(&extra), &[]).expect_err("refused");

    let message = refused.to_string();
    assert!(
        message.contains("extra.toml")
            && message.contains("OPENAI_ADMIN_KEY")
            && message.contains("openai.admin_key_file"),
        "{message}"
    );
    assert!(!message.contains("CANARY"), "{message}");
}

#[test]
fn a_database_password_in_a_configuration_file_is_refused_without_echoing_it() {
    let dir = temp_dir("password-in-file");
    std::fs::write(
        dir.join("local.toml"),
        "[database]\nurl = \"postgres://sync:CANARY-placeholder@127.0.0.1:5432/openai\"\n",
    )
    .expect("write");

    let refused = load(&dir, None, &[]).expect_err("refused");

    let message = refused.to_string();
    assert!(
        message.contains("local.toml")
            && message.contains("DATABASE_URL")
            && message.contains(".pgpass"),
        "{message}"
    );
    assert!(!message.contains("CANARY"), "{message}");
    // Postgres also reads a password from the URL's query.
    std::fs::write(
        dir.join("local.toml"),
        "[database]\nurl = \"postgres://sync@127.0.0.1:5432/openai?password=CANARY-placeholder\"\n",
    )
    .expect("write");
    let refused = load(&dir, None, &[]).expect_err("a password in the query is refused too");
    assert!(!refused.to_string().contains("CANARY"), "{refused}");
    // Without the password the same URL is fine; the environment may carry one.
    std::fs::write(
        dir.join("local.toml"),
        "[database]\nurl = \"postgres://sync@127.0.0.1:5432/openai\"\n",
    )
    .expect("write");
    load(&dir, None, &[]).expect("a URL without a password in a file");
    let from_env = load(
        &dir,
        None,
        &[(
            "DATABASE_URL",
            "postgres://sync:env-placeholder@127.0.0.1:5432/openai",
        )],
    )
    .expect("a password from the environment");
    assert!(
        from_env
            .database_url()
            .expect("a URL")
            .expose_secret()
            .contains("env-placeholder")
    );
}

#[test]
fn refusals_say_what_would_be_accepted() {
    let dir = temp_dir("refusal-words");
    let words = load(&dir, None, &[("APP_REQUESTS__UNRESOLVED", "never")])
        .expect_err("not one of its words")
        .to_string();
    assert!(
        words.contains("requests.unresolved") && words.contains("retry or hold"),
        "{words}"
    );
    let crontab = load(&dir, None, &[("APP_COSTS__SCHEDULE", "15 * * * *")])
        .expect_err("a crontab line")
        .to_string();
    assert!(crontab.contains("\"0 15 * * * *\""), "{crontab}");
    let socket = load(
        &dir,
        None,
        &[(
            "DATABASE_URL",
            "postgres://sync:CANARY-placeholder@/openai?host=/run/postgresql",
        )],
    )
    .expect_err("a user but no host")
    .to_string();
    assert!(
        socket.contains("Unix socket") && !socket.contains("CANARY"),
        "{socket}"
    );
}

#[test]
fn sync_says_a_configuration_problem_once_not_once_per_pass() {
    let output = run_binary(&["sync"], &[("OPENAI_ADMIN_KEY", "sk-admin-placeholder")]);

    let text = output_text(&output);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert_eq!(
        text.matches("no database is configured").count(),
        1,
        "{text}"
    );
}

#[test]
fn a_configuration_folder_given_that_does_not_exist_is_refused_by_name() {
    let dir = temp_dir("no-such-folder").join("missing");
    let missing = dir.to_string_lossy().to_string();

    let output = run_binary(&["check", "--config-dir", &missing], &[]);

    let text = output_text(&output);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert!(
        text.contains("--config-dir") && text.contains("missing"),
        "{text}"
    );
}

#[test]
fn the_binary_warns_about_a_stray_app_variable_and_refuses_a_non_utf8_one() {
    use std::os::unix::ffi::OsStrExt;

    let dir = temp_dir("binary-env");
    let dir_arg = dir.to_string_lossy().to_string();
    // `check` without a database or key still loads the configuration first.
    let stray = run_binary(
        &["check", "--config-dir", &dir_arg],
        &[("APP_FOO", "bar"), ("RUST_LOG", "warn")],
    );
    let non_utf8 = std::process::Command::new(env!("CARGO_BIN_EXE_openai-project-sync"))
        .args(["check", "--config-dir", &dir_arg])
        .env(
            "APP_OPENAI__BASE_URL",
            std::ffi::OsStr::from_bytes(b"http://127.0.0.1/\xff"),
        )
        .output()
        .expect("run the binary");

    let stray_text = output_text(&stray);
    assert!(
        stray_text.contains("APP_FOO") && stray_text.contains("ignored"),
        "{stray_text}"
    );
    assert!(
        !stray_text.contains("bar"),
        "the value is not logged: {stray_text}"
    );
    assert!(
        !stray_text.contains('\u{1b}'),
        "piped logs hold no escape codes: {stray_text:?}"
    );
    assert_ne!(stray.status.code(), Some(2), "{stray_text}");
    let refused = output_text(&non_utf8);
    assert_eq!(non_utf8.status.code(), Some(2), "{refused}");
    assert!(
        refused.contains("APP_OPENAI__BASE_URL") && refused.contains("UTF-8"),
        "{refused}"
    );
    assert!(!refused.contains("panicked"), "{refused}");
}

#[test]
fn a_schedule_that_never_fires_is_refused_by_the_configuration_check() {
    // Valid cron syntax, but there is no 30th of February: the daemon would never walk.
    for (variable, key) in [
        ("APP_SYNC__SCHEDULE", "sync.schedule"),
        ("APP_COSTS__SCHEDULE", "costs.schedule"),
    ] {
        let message = invalid_message(&[(variable, "0 0 0 30 2 *")]);
        assert!(message.contains(key), "{variable}: {message}");
    }
}

#[test]
fn a_database_password_with_unescaped_url_characters_is_refused_naming_percent_encoding_without_echoing_it()
 {
    // Generated passwords often hold `/`, `#`, `?`: unescaped, they end the URL's authority.
    for url in [
        "postgres://app:9/S3CRETPART@127.0.0.1:5432/openai",
        "postgres://app:pa#S3CRETPART@127.0.0.1:5432/openai",
        "postgres://app:pa?S3CRETPART@127.0.0.1:5432/openai",
    ] {
        let message = invalid_message(&[("DATABASE_URL", url)]);
        assert!(
            message.contains("database.url") && message.contains("percent-encode"),
            "{url}: {message}"
        );
        assert!(!message.contains("S3CRETPART"), "{url}: {message}");
    }
}
