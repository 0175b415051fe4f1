//! The two region vocabularies: the old, write-only `geography` and the newer `residency`.

/// Values the old `geography` field accepts on create.
pub const GEOGRAPHIES: [&str; 8] = ["US", "EU", "JP", "IN", "KR", "CA", "AU", "SG"];

/// Values the `residency` field accepts on create (`PublicProjectResidency` and its later additions).
pub const RESIDENCIES: [&str; 15] = [
    "GLOBAL",
    "US_STORAGE_PROCESSING",
    "EU_STORAGE_PROCESSING",
    "JP_STORAGE",
    "KR_STORAGE",
    "CA_STORAGE",
    "SG_STORAGE",
    "IN_STORAGE",
    "AU_STORAGE",
    "GB_STORAGE",
    "AE_STORAGE",
    "AE_STORAGE_PROCESSING",
    "JP_STORAGE_PROCESSING",
    "IN_STORAGE_PROCESSING",
    "AU_STORAGE_PROCESSING",
];

/// The residency an old-vocabulary geography is answered as, or `None` for an unknown geography.
pub fn residency_of_geography(geography: &str) -> Option<&'static str> {
    Some(match geography {
        "US" => "US_STORAGE_PROCESSING",
        "EU" => "EU_STORAGE_PROCESSING",
        "JP" => "JP_STORAGE",
        "IN" => "IN_STORAGE",
        "KR" => "KR_STORAGE",
        "CA" => "CA_STORAGE",
        "AU" => "AU_STORAGE",
        "SG" => "SG_STORAGE",
        _ => return None,
    })
}
