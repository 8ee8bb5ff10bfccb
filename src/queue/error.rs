//! The queue's error, and what each rule of `pdq.jobs` means to the producer it refuses.

/// A queue operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Postgres refused a row inserted into `pdq.jobs` because it breaks a rule of the SQL
    /// contract (only statements that insert jobs report this; any other statement's
    /// constraint error is a [`Error::Database`] that names its own constraint).
    #[error("refused by constraint {constraint}: {meaning}")]
    Refused {
        /// The constraint's name, e.g. `attribute_values_must_be_strings`.
        constraint: String,
        /// What the constraint means, in plain words.
        meaning: String,
    },
    /// The unit's lease expired and another worker may own it now; nothing was changed.
    #[error("lease lost: the unit was reclaimed after its lease expired")]
    LeaseLost,
    /// Any other database error.
    #[error(transparent)]
    Database(sqlx::Error),
}

impl From<sqlx::Error> for Error {
    fn from(error: sqlx::Error) -> Self {
        Error::Database(error)
    }
}

impl Error {
    /// The error of a statement that inserts into `pdq.jobs` (an enqueue, a requeue): a
    /// constraint it broke is a rule of the SQL contract, explained to the producer.
    pub(super) fn on_insert(error: sqlx::Error) -> Error {
        let constraint = error
            .as_database_error()
            .and_then(|db| db.constraint())
            .map(str::to_owned);
        match constraint {
            Some(constraint) => Error::Refused {
                meaning: constraint_meaning(&constraint).to_owned(),
                constraint,
            },
            None => Error::Database(error),
        }
    }
}

/// Explains a constraint of `pdq.jobs` to the producer whose row it refused.
pub fn constraint_meaning(constraint: &str) -> &'static str {
    match constraint {
        "attributes_must_be_a_json_object" => "attributes must be a JSON object of string keys to string values",
        "attributes_must_not_be_empty" => "attributes must name at least one key",
        "attribute_values_must_be_strings" => "every attribute value must be a JSON string (quote numbers and booleans)",
        "attribute_keys_must_not_be_empty" => "attribute keys must not be empty or blank",
        "attributes_must_fit_the_512000_byte_request_limit" => "the attributes make a request body over the API's 512,000-byte limit",
        "exactly_one_of_conversation_id_or_external_tag" => "give exactly one of conversation_id or external_tag",
        "external_tag_must_not_be_empty" => "external_tag must not be empty",
        "at_most_one_participant_locator" => "give at most one of participant_id, participant_purpose, participant_external_contact_id, participant_name",
        "participant_locator_must_not_be_empty" => "a participant locator must not be empty",
        "priority_must_be_live_or_backfill" => "priority must be 'live' or 'backfill'",
        "max_attempts_must_be_positive" => "max_attempts must be at least 1",
        "idempotency_key_must_not_be_empty" => "idempotency_key must not be empty",
        "idempotency_key_already_enqueued" => "a job with this idempotency_key is already queued (use ON CONFLICT DO NOTHING)",
        "attribute_keys_must_not_use_a_protected_prefix" => "an attribute key uses a prefix owned by Genesys Cloud or another tool (see pdq.protected_key_prefixes; case does not matter)",
        "run_at_must_be_finite" => "run_at must be a real time, not infinity or -infinity",
        "expires_at_must_be_finite" => "expires_at must be a real time, not infinity or -infinity (leave it null for no deadline)",
        "expires_at_must_be_after_run_at" => "expires_at must be later than run_at",
        "attempts_must_not_be_negative" => "attempts must not be negative",
        "run_at_must_be_before_the_year_10000" => "run_at must be before the year 10000",
        "expires_at_must_be_before_the_year_10000" => "expires_at must be before the year 10000 (leave it null for no deadline)",
        "attributes_must_not_contain_nul" => "attribute keys and values must not contain a NUL character (\\u0000)",
        "text_must_not_contain_nul" => "locators and idempotency_key must not contain a NUL character",
        "idempotency_key_must_be_at_most_200_characters" => "idempotency_key must be at most 200 characters",
        "external_tag_must_be_at_most_256_characters" => "external_tag must be at most 256 characters",
        "participant_locator_must_be_at_most_256_characters" => "participant_purpose, participant_external_contact_id and participant_name must be at most 256 characters",
        "attribute_keys_must_be_at_most_256_characters" => "every attribute key must be at most 256 characters",
        _ => "the row breaks a rule of pdq.jobs",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A constraint error as Postgres reports it, naming `constraint`.
    #[derive(Debug)]
    struct Violation {
        constraint: &'static str,
        unique: bool,
    }

    impl std::fmt::Display for Violation {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "violates constraint \"{}\"", self.constraint)
        }
    }

    impl std::error::Error for Violation {}

    impl sqlx::error::DatabaseError for Violation {
        fn message(&self) -> &str {
            "violates a constraint"
        }
        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }
        fn constraint(&self) -> Option<&str> {
            Some(self.constraint)
        }
        fn kind(&self) -> sqlx::error::ErrorKind {
            match self.unique {
                true => sqlx::error::ErrorKind::UniqueViolation,
                false => sqlx::error::ErrorKind::CheckViolation,
            }
        }
    }

    fn violation(constraint: &'static str, unique: bool) -> sqlx::Error {
        sqlx::Error::Database(Box::new(Violation { constraint, unique }))
    }

    #[test]
    fn only_an_insert_of_jobs_reports_a_broken_rule_of_pdq_jobs() {
        let check = || violation("attribute_values_must_be_strings", false);
        match Error::on_insert(check()) {
            Error::Refused {
                constraint,
                meaning,
            } => {
                assert_eq!(constraint, "attribute_values_must_be_strings");
                assert_eq!(meaning, constraint_meaning(&constraint));
            }
            other => panic!("an insert's check violation is a refusal: {other:?}"),
        }
        let clash = violation("finished_jobs_pkey", true);
        let error = Error::from(clash);
        assert!(matches!(error, Error::Database(_)), "{error:?}");
        let text = error.to_string();
        assert!(text.contains("finished_jobs_pkey"), "{text}");
        assert!(!text.contains("rule of pdq.jobs"), "{text}");
        assert!(matches!(Error::from(check()), Error::Database(_)));
    }
}
