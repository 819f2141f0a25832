//! The session parameters a client sees through ParameterStatus and that transaction pooling
//! must carry from one server connection to the next (PgBouncer's varcache): client_encoding,
//! DateStyle, TimeZone, IntervalStyle, standard_conforming_strings, application_name, and
//! the server-reported parameters `track_extra_parameters` adds (set once at start).
//! Owns the values and the `SET` commands that reconcile two maps; it sends nothing itself.

use postgres_protocol::escape::escape_literal;
use std::sync::{Arc, OnceLock};

/// The parameters tracked always.
const BUILT_IN: usize = 6;
/// At most this many more from track_extra_parameters.
pub const MAX_EXTRA: usize = 8;
/// Room for every tracked parameter's value (`ParamMap::values_of`).
pub const SLOTS: usize = BUILT_IN + MAX_EXTRA;

/// track_extra_parameters' names beyond the built-in six, in configured order (set at start).
static EXTRA: OnceLock<Box<[Box<str>]>> = OnceLock::new();

fn extras() -> &'static [Box<str>] {
    EXTRA.get().map_or(&[], |names| names)
}

/// A parameter tracked per client and per server connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrackedParam {
    ClientEncoding,
    DateStyle,
    TimeZone,
    IntervalStyle,
    StandardConformingStrings,
    ApplicationName,
    /// The n-th of track_extra_parameters' own names.
    Extra(u8),
}

impl TrackedParam {
    const BUILT_IN: [TrackedParam; BUILT_IN] = [
        TrackedParam::ClientEncoding,
        TrackedParam::DateStyle,
        TrackedParam::TimeZone,
        TrackedParam::IntervalStyle,
        TrackedParam::StandardConformingStrings,
        TrackedParam::ApplicationName,
    ];

    /// Every tracked parameter: the built-in six, then track_extra_parameters' own.
    pub fn all() -> impl Iterator<Item = TrackedParam> {
        let extra = extras().len() as u8;
        Self::BUILT_IN.into_iter().chain((0..extra).map(TrackedParam::Extra))
    }

    /// The name as PostgreSQL reports it in ParameterStatus (an extra one as configured).
    pub fn name(self) -> &'static str {
        match self {
            TrackedParam::ClientEncoding => "client_encoding",
            TrackedParam::DateStyle => "DateStyle",
            TrackedParam::TimeZone => "TimeZone",
            TrackedParam::IntervalStyle => "IntervalStyle",
            TrackedParam::StandardConformingStrings => "standard_conforming_strings",
            TrackedParam::ApplicationName => "application_name",
            TrackedParam::Extra(n) => extras().get(usize::from(n)).map_or("", |name| name),
        }
    }

    /// Parameter names are case-insensitive, as in PostgreSQL (`datestyle` in a startup packet).
    pub fn from_name(name: &str) -> Option<Self> {
        // The six names have six different lengths: one comparison at most (a login looks up
        // every startup parameter and every parameter of the server's welcome).
        let candidate = match name.len() {
            15 => TrackedParam::ClientEncoding,
            9 => TrackedParam::DateStyle,
            8 => TrackedParam::TimeZone,
            13 => TrackedParam::IntervalStyle,
            27 => TrackedParam::StandardConformingStrings,
            16 => TrackedParam::ApplicationName,
            _ => return Self::extra(name),
        };
        if candidate.name().eq_ignore_ascii_case(name) {
            Some(candidate)
        } else {
            Self::extra(name)
        }
    }

    fn extra(name: &str) -> Option<Self> {
        extras().iter().position(|extra| extra.eq_ignore_ascii_case(name)).map(|n| TrackedParam::Extra(n as u8))
    }

    /// Its place in a `[_; SLOTS]` of values (`ParamMap::values_of`).
    pub fn index(self) -> usize {
        match self {
            TrackedParam::ClientEncoding => 0,
            TrackedParam::DateStyle => 1,
            TrackedParam::TimeZone => 2,
            TrackedParam::IntervalStyle => 3,
            TrackedParam::StandardConformingStrings => 4,
            TrackedParam::ApplicationName => 5,
            TrackedParam::Extra(n) => BUILT_IN + usize::from(n),
        }
    }
}

/// track_extra_parameters, at start: names already tracked (PgBouncer's default,
/// IntervalStyle, is one) are skipped. Err if there are too many, if a name is empty, or if
/// another list was set before (the list is fixed for the process's life).
pub fn track_extra_parameters(names: &[String]) -> Result<(), String> {
    let own: Box<[Box<str>]> = extra_parameter_names(names)?.into();
    match EXTRA.get() {
        Some(set) if set[..].iter().eq(own.iter()) => Ok(()),
        Some(_) => Err("track_extra_parameters is read at start only; restart the pooler to change it".into()),
        None => EXTRA.set(own).map_err(|_| "track_extra_parameters was set concurrently".to_owned()),
    }
}

/// track_extra_parameters' own names (those not tracked always, each once), or why the list
/// cannot be tracked.
pub fn extra_parameter_names(names: &[String]) -> Result<Vec<Box<str>>, String> {
    let mut own: Vec<Box<str>> = Vec::new();
    for name in names.iter().map(|n| n.trim()) {
        if name.is_empty() || name.contains(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.')) {
            return Err(format!("{name:?} is not a parameter name"));
        }
        let built_in = TrackedParam::BUILT_IN.iter().any(|p| p.name().eq_ignore_ascii_case(name));
        if !built_in && !own.iter().any(|o| o.eq_ignore_ascii_case(name)) {
            own.push(name.into());
        }
    }
    if own.len() > MAX_EXTRA {
        return Err(format!("at most {MAX_EXTRA} parameters besides the six tracked always"));
    }
    Ok(own)
}

/// Whether `names` is the list in force (a RELOAD cannot change it).
pub fn tracks_extra_parameters(names: &[String]) -> bool {
    extra_parameter_names(names).is_ok_and(|own| own[..] == *extras())
}

/// Values of the tracked parameters, as one side last reported or asked for them.
///
/// Copy on write: clones share one allocation until one of them changes a value, and the
/// pool hands clients that logged in with the same values one shared map
/// (`Pool::share_values`). An idle client costs 8 bytes here instead of six strings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParamMap {
    values: Arc<[Option<Box<str>>; SLOTS]>,
}

impl ParamMap {
    pub fn new() -> Self {
        Self::default()
    }

    /// Values from name/value pairs (a startup packet, a server's login ParameterStatus);
    /// untracked names are ignored.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut map = Self::new();
        for (name, value) in pairs {
            map.set_by_name(name, value);
        }
        map
    }

    /// The values name/value pairs give (later pairs win; untracked names are ignored), as
    /// borrowed strings: what a login compares with the map other clients share before it
    /// builds one (`Pool::share_values`).
    pub fn values_of<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> [Option<&'a str>; SLOTS] {
        let mut values = [None; SLOTS];
        for (name, value) in pairs {
            if let Some(param) = TrackedParam::from_name(name) {
                values[param.index()] = Some(value);
            }
        }
        values
    }

    /// Whether this map holds exactly `values`.
    pub fn has_values(&self, values: &[Option<&str>; SLOTS]) -> bool {
        self.values.iter().map(Option::as_deref).eq(values.iter().copied())
    }

    pub fn from_values(values: &[Option<&str>; SLOTS]) -> Self {
        ParamMap { values: Arc::new(std::array::from_fn(|i| values[i].map(Box::from))) }
    }

    pub fn get(&self, param: TrackedParam) -> Option<&str> {
        self.values[param.index()].as_deref()
    }

    /// Sets a value; setting the value it already has changes (and copies) nothing.
    pub fn set(&mut self, param: TrackedParam, value: &str) {
        if self.get(param) == Some(value) {
            return;
        }
        Arc::make_mut(&mut self.values)[param.index()] = Some(value.into());
    }

    /// Whether both maps are one shared allocation.
    pub fn shares_values_with(&self, other: &ParamMap) -> bool {
        Arc::ptr_eq(&self.values, &other.values)
    }

    /// Sets a value by its reported name; false if the name is not tracked.
    pub fn set_by_name(&mut self, name: &str, value: &str) -> bool {
        match TrackedParam::from_name(name) {
            Some(param) => {
                self.set(param, value);
                true
            }
            None => false,
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (TrackedParam, &str)> {
        TrackedParam::all().filter_map(|param| self.get(param).map(|value| (param, value)))
    }

    /// Parameters whose value here is known and differs from (or is unknown on) `server`.
    pub fn differing<'a>(&'a self, server: &'a ParamMap) -> impl Iterator<Item = (TrackedParam, &'a str)> + 'a {
        self.iter().filter(move |(param, value)| server.get(*param) != Some(*value))
    }

    /// The `SET` commands that bring `server` in line with these values, one per parameter.
    pub fn set_commands(&self, server: &ParamMap) -> Vec<String> {
        self.differing(server)
            .map(|(param, value)| format!("SET {} = {}", param.name(), escape_literal(value)))
            .collect()
    }

    /// After the `SET`s ran: take the server's spelling of each value (PostgreSQL reports `UTC`
    /// for `utc`), so the next comparison does not see a difference that is not there.
    pub fn adopt_canonical(&mut self, server: &ParamMap) {
        for param in TrackedParam::all() {
            if let (Some(_), Some(canonical)) = (self.get(param), server.get(param)) {
                self.set(param, canonical);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_of_pairs_are_what_a_map_built_from_them_holds() {
        let pairs =
            [("TimeZone", "UTC"), ("server_version", "15"), ("datestyle", "ISO, MDY"), ("TimeZone", "Asia/Tokyo")];
        let values = ParamMap::values_of(pairs);
        let built = ParamMap::from_pairs(pairs);
        assert!(built.has_values(&values));
        assert_eq!(ParamMap::from_values(&values), built);
        assert_eq!(built.get(TrackedParam::TimeZone), Some("Asia/Tokyo"), "the later pair wins");
        let mut other = values;
        other[TrackedParam::ApplicationName.index()] = Some("app");
        assert!(!built.has_values(&other));
    }

    #[test]
    fn extra_parameters_skip_the_built_in_ones_and_are_bounded() {
        let names = |list: &[&str]| list.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let own = extra_parameter_names(&names(&["IntervalStyle", "search_path", "SEARCH_PATH", "timezone"]));
        assert_eq!(own.unwrap(), vec![Box::from("search_path")]);
        assert_eq!(extra_parameter_names(&names(&["IntervalStyle"])).unwrap(), Vec::<Box<str>>::new());
        let nine: Vec<String> = (0..9).map(|i| format!("p{i}")).collect();
        assert_eq!(extra_parameter_names(&nine).unwrap_err(), "at most 8 parameters besides the six tracked always");
        assert!(extra_parameter_names(&names(&["bad name"])).is_err());
        assert!(extra_parameter_names(&names(&[""])).is_err());
        // Nothing was set in this process: the built-in six are all there is.
        assert_eq!(TrackedParam::all().count(), 6);
        assert_eq!(TrackedParam::from_name("search_path"), None);
    }

    #[test]
    fn names_are_case_insensitive() {
        assert_eq!(TrackedParam::from_name("datestyle"), Some(TrackedParam::DateStyle));
        assert_eq!(TrackedParam::from_name("TIMEZONE"), Some(TrackedParam::TimeZone));
        assert_eq!(TrackedParam::from_name("search_path"), None);
        for param in TrackedParam::all() {
            assert_eq!(TrackedParam::from_name(param.name()), Some(param));
            assert_eq!(TrackedParam::from_name(&param.name().to_uppercase()), Some(param));
            let mut other = param.name().to_owned();
            other.replace_range(..1, "x");
            assert_eq!(TrackedParam::from_name(&other), None, "{other}");
        }
    }

    #[test]
    fn set_commands_cover_only_differences() {
        let client = ParamMap::from_pairs([
            ("client_encoding", "UTF8"),
            ("TimeZone", "Europe/Paris"),
            ("application_name", "it's \\ mine"),
            ("server_version", "15.4"),
        ]);
        let server = ParamMap::from_pairs([("client_encoding", "UTF8"), ("TimeZone", "UTC")]);
        assert_eq!(
            client.set_commands(&server),
            vec!["SET TimeZone = 'Europe/Paris'".to_owned(), "SET application_name =  E'it''s \\\\ mine'".to_owned()]
        );
        assert!(client.set_commands(&client).is_empty());
        assert!(ParamMap::new().set_commands(&server).is_empty(), "unknown client values are left alone");
    }

    #[test]
    fn canonical_spelling_is_adopted() {
        let mut client = ParamMap::from_pairs([("TimeZone", "utc")]);
        let server = ParamMap::from_pairs([("TimeZone", "UTC"), ("DateStyle", "ISO, MDY")]);
        client.adopt_canonical(&server);
        assert_eq!(client.get(TrackedParam::TimeZone), Some("UTC"));
        assert_eq!(client.get(TrackedParam::DateStyle), None);
    }

    #[test]
    fn clones_share_values_until_one_changes() {
        let a = ParamMap::from_pairs([("TimeZone", "UTC"), ("application_name", "app")]);
        let mut b = a.clone();
        b.set(TrackedParam::TimeZone, "UTC");
        assert!(b.shares_values_with(&a), "setting the same value copied the map");
        b.set(TrackedParam::TimeZone, "Europe/Paris");
        assert!(!b.shares_values_with(&a));
        assert_eq!(a.get(TrackedParam::TimeZone), Some("UTC"));
        assert_eq!(b.get(TrackedParam::TimeZone), Some("Europe/Paris"));
        assert_eq!(b.get(TrackedParam::ApplicationName), Some("app"));
    }
}
