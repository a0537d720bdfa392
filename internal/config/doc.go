// Package config reads gatehouse's YAML configuration (with viper, the only
// importer of it) over an embedded, commented default, applies GATEHOUSE_…
// environment overrides, decodes strictly and validates everything at once,
// naming each problem's key path. It compiles a valid file into a
// policy.Policy and touches nothing else.
package config
