//! How the [`crate::ids`] types, the statuses and the budget metrics are
//! stored: as their text, in every backend (sqlx for PostgreSQL and SQLite
//! reads, rusqlite for SQLite's writer).
//!
//! An id read back is taken as stored (the column is where it was checked
//! on its way in). A status or metric is stored by name; a name no host
//! writes (a hand-edited row) is a decode error naming it, never a guess.

use crate::ids::{ApprovalId, InvocationId, KeyId, LedgerScope, TenantId, Window};
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgHasArrayType, PgTypeInfo};

/// `$ty` stored as text: written as `$ty::as_str`, read by `$read` (text →
/// `Result<$ty, String>`).
macro_rules! text_column {
    ($ty:ty, $read:expr) => {
        impl<DB: sqlx::Database> sqlx::Type<DB> for $ty
        where
            String: sqlx::Type<DB>,
        {
            fn type_info() -> DB::TypeInfo {
                <String as sqlx::Type<DB>>::type_info()
            }

            fn compatible(ty: &DB::TypeInfo) -> bool {
                <String as sqlx::Type<DB>>::compatible(ty)
            }
        }

        impl<'q, DB: sqlx::Database> sqlx::Encode<'q, DB> for $ty
        where
            for<'s> &'s str: sqlx::Encode<'q, DB>,
        {
            fn encode_by_ref(
                &self,
                buf: &mut DB::ArgumentBuffer,
            ) -> Result<sqlx::encode::IsNull, BoxDynError> {
                <&str as sqlx::Encode<'q, DB>>::encode_by_ref(&self.as_str(), buf)
            }
        }

        impl<'r, DB: sqlx::Database> sqlx::Decode<'r, DB> for $ty
        where
            String: sqlx::Decode<'r, DB>,
        {
            fn decode(value: DB::ValueRef<'r>) -> Result<Self, BoxDynError> {
                let text = <String as sqlx::Decode<'r, DB>>::decode(value)?;
                let read: fn(String) -> Result<$ty, String> = $read;
                read(text).map_err(Into::into)
            }
        }

        impl PgHasArrayType for $ty {
            fn array_type_info() -> PgTypeInfo {
                <String as PgHasArrayType>::array_type_info()
            }

            fn array_compatible(ty: &PgTypeInfo) -> bool {
                <String as PgHasArrayType>::array_compatible(ty)
            }
        }

        impl rusqlite::ToSql for $ty {
            fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
                Ok(rusqlite::types::ToSqlOutput::Borrowed(
                    rusqlite::types::ValueRef::Text(self.as_str().as_bytes()),
                ))
            }
        }

        impl rusqlite::types::FromSql for $ty {
            fn column_result(
                value: rusqlite::types::ValueRef<'_>,
            ) -> rusqlite::types::FromSqlResult<Self> {
                let text = String::column_result(value)?;
                let read: fn(String) -> Result<$ty, String> = $read;
                read(text).map_err(|e| rusqlite::types::FromSqlError::Other(e.into()))
            }
        }
    };
}

/// An id: the text as stored.
macro_rules! id_column {
    ($($ty:ty),*) => {$(text_column!($ty, |text| Ok(text.into()));)*};
}

/// A name from a closed set, read by the type's `parse`.
macro_rules! name_column {
    ($($ty:ty => $what:literal),*) => {$(
        text_column!($ty, |text| <$ty>::parse(&text).ok_or_else(|| unknown($what, &text)));
    )*};
}

id_column!(
    TenantId,
    InvocationId,
    ApprovalId,
    KeyId,
    LedgerScope,
    Window
);

name_column!(
    crate::record::Status => "invocation status",
    crate::storage::ApprovalStatus => "approval status",
    crate::budget::Metric => "budget metric"
);

/// A stored name that no host writes.
fn unknown(what: &str, name: &str) -> String {
    let shown: String = name.chars().take(40).collect();
    format!("the database holds an unknown {what} {shown:?}")
}
