//! Rebuilds when a migration changes: `sqlx::migrate!` embeds them, but cargo cannot see that.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
