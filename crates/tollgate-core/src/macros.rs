//! The accessors every Tollgate service offers, written once.

/// Writes `get_ref`, `get_mut` and `into_inner` for a service that wraps
/// an inner service, as tower-http's services have them. Use it inside the
/// service's `impl` block; by default the inner service is the field
/// `inner` of type `S`, or name them: `inner_accessors!(inner: S)`.
///
/// The methods it writes:
///
/// - `get_ref(&self) -> &S`: the inner service.
/// - `get_mut(&mut self) -> &mut S`: the inner service, mutably.
/// - `into_inner(self) -> S`: unwraps the inner service, dropping the
///   wrapper (a clone of the wrapper keeps its shared state).
///
/// ```
/// pub struct Logged<S> {
///     inner: S,
///     label: &'static str,
/// }
///
/// impl<S> Logged<S> {
///     tollgate_core::inner_accessors!();
/// }
///
/// fn main() {
///     let mut logged = Logged { inner: 7u8, label: "x" };
///     *logged.get_mut() += 1;
///     assert_eq!((*logged.get_ref(), logged.label), (8, "x"));
///     assert_eq!(logged.into_inner(), 8);
/// }
/// ```
#[macro_export]
macro_rules! inner_accessors {
    () => {
        $crate::inner_accessors!(inner: S);
    };
    ($field:ident : $inner:ty) => {
        /// The inner service.
        pub fn get_ref(&self) -> &$inner {
            &self.$field
        }

        /// The inner service, mutably.
        pub fn get_mut(&mut self) -> &mut $inner {
            &mut self.$field
        }

        /// Unwraps the inner service.
        pub fn into_inner(self) -> $inner {
            self.$field
        }
    };
}
