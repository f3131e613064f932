//! Choosing a backend per stage.
