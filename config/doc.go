// Package config builds synguard's validated configuration from its
// configuration file (YAML), its command-line flags, or both.
//
// The file's top-level keys are the run command's flags with dashes
// as underscores (half_open_high for --half-open-high); services lists
// protected services, each with its own mode, watermarks, backend
// options and allow and deny lists. A setting a service leaves out comes
// from the top level, and one the top level leaves out from the default.
// A flag given on the command line wins over the file's top-level key;
// --protect replaces the file's protect and services lists.
//
// Every mistake is an [*Error] that says where it is: the file, line and
// column and the key's path (services[1].half_open_low), or the flag.
// Unknown keys, keys given twice, values of the wrong type and
// inconsistent settings are all errors; nothing is silently ignored.
//
// [Source.Load] reads the file afresh each time, so a reload is a second
// call; [RestartNeeded] lists the settings a reload cannot change.
package config
