//! `forget`: removes views dropped or renamed from the log tables, all or none.

use crate::catalog;
use crate::db::DbTarget;
use crate::error::{Error, Exit};
use crate::outln;
use crate::output;
use crate::quote;
use crate::refresh_log::RefreshLog;

/// `forget`: deletes views' summary rows and history, all or none.
pub(super) async fn forget(
    target: &DbTarget,
    log: &RefreshLog,
    names: &[String],
) -> Result<Exit, Error> {
    let pool = target.pool(1);
    let mut client = target.connect(&pool).await?;
    let db_err = |context| Error::in_context(context, target);
    let exists = log
        .exists(&*client)
        .await
        .map_err(db_err("looking for the log tables"))?;
    if !exists {
        return Err(Error::Usage(format!(
            "there are no log tables in schema {} to forget views in",
            quote::display_ident(log.schema())
        )));
    }
    let known = log
        .known_views(&*client)
        .await
        .map_err(db_err("reading the log tables"))?;
    let views = names
        .iter()
        .map(|name| logged_name(name, &known))
        .collect::<Result<Vec<_>, _>>()
        .map_err(Error::Usage)?;
    let (summary, history) = log
        .forget(&mut client, &views)
        .await
        .map_err(db_err("deleting from the log tables"))?;
    outln!(
        "forgot {}: {} and {}",
        views.join(", "),
        output::count(summary as usize, "summary row", "summary rows"),
        output::count(history as usize, "history row", "history rows"),
    );
    Ok(Exit::Success)
}

/// The name the log tables know `name` by: itself, or the one schema-qualified
/// name ending in it.
fn logged_name(name: &str, known: &[String]) -> Result<String, String> {
    if known.iter().any(|k| k == name) {
        return Ok(name.to_owned());
    }
    let suffix = format!(".{name}");
    let matching: Vec<&String> = match name.contains('.') {
        true => Vec::new(),
        false => known.iter().filter(|k| k.ends_with(&suffix)).collect(),
    };
    match matching[..] {
        [one] => Ok(one.clone()),
        [] => Err(format!(
            "the log tables have no rows for {name}{} (nothing was deleted)",
            catalog::closest(name, known)
                .map_or(String::new(), |like| format!("; did you mean {like}?"))
        )),
        _ => Err(format!(
            "{name} is ambiguous in the log tables ({}): give the schema (nothing was deleted)",
            matching
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}
