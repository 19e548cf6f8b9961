//! `init`: creates or upgrades the log tables (idempotent).

use crate::db::DbTarget;
use crate::error::{Error, Exit};
use crate::outln;
use crate::quote;
use crate::refresh_log::RefreshLog;

pub(super) async fn init(target: &DbTarget, log: &RefreshLog) -> Result<Exit, Error> {
    let pool = target.pool(1);
    let mut client = target.connect(&pool).await?;
    log.create(&mut client).await.map_err(|e| {
        Error::database(
            &format!("creating the log tables in schema {:?}", log.schema()),
            target,
            e,
        )
    })?;
    outln!(
        "log tables ready: {0}.materialized_views_refresh_log, {0}.materialized_views_refresh_history",
        quote::display_ident(log.schema())
    );
    Ok(Exit::Success)
}
