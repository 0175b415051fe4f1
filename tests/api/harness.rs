//! The test harness itself: each test's database is its own.

use crate::helpers::TestDb;

#[tokio::test]
async fn each_test_gets_a_fresh_empty_database_of_its_own() {
    let first = TestDb::new().await;
    let second = TestDb::new().await;

    sqlx::query("create table marker (id int)")
        .execute(&first.pool)
        .await
        .expect("create a table in the first database");
    let (tables,): (i64,) = sqlx::query_as(
        "select count(*) from information_schema.tables where table_schema = 'public'",
    )
    .fetch_one(&second.pool)
    .await
    .expect("count tables in the second database");

    assert_ne!(first.url, second.url);
    assert_eq!(tables, 0);
}
