package config

import (
	"fmt"
	"math"
	"reflect"
	"strconv"
	"strings"
)

// ByteSize is a size in bytes, written as a number of bytes or with a
// binary unit: 512B, 64KiB, 32MiB, 1GiB (k, m and g as nginx reads them
// are the same units).
type ByteSize int64

var sizeUnits = []struct {
	suffix string
	mult   int64
}{
	{"kib", 1 << 10}, {"mib", 1 << 20}, {"gib", 1 << 30},
	{"k", 1 << 10}, {"m", 1 << 20}, {"g", 1 << 30}, {"b", 1},
}

// ParseByteSize reads "64KiB", "32MiB", "1048576" and the like.
func ParseByteSize(s string) (ByteSize, error) {
	t := strings.ToLower(strings.TrimSpace(s))
	if strings.HasSuffix(t, "kb") || strings.HasSuffix(t, "mb") || strings.HasSuffix(t, "gb") {
		return 0, fmt.Errorf("%q: write binary units, KiB, MiB or GiB", s)
	}
	mult := int64(1)
	for _, u := range sizeUnits {
		if num, ok := strings.CutSuffix(t, u.suffix); ok {
			t, mult = strings.TrimSpace(num), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n < 0 || n > math.MaxInt64/mult {
		return 0, fmt.Errorf("%q is not a size like 512B, 64KiB or 32MiB", s)
	}
	return ByteSize(n * mult), nil
}

// String writes the size with the largest unit that divides it.
func (b ByteSize) String() string {
	for _, u := range []struct {
		suffix string
		mult   ByteSize
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if b != 0 && b%u.mult == 0 {
			return strconv.FormatInt(int64(b/u.mult), 10) + u.suffix
		}
	}
	return strconv.FormatInt(int64(b), 10) + "B"
}

// byteSizeHook decodes strings with units into ByteSize; plain integers
// decode as bytes without it.
func byteSizeHook(from, to reflect.Type, data any) (any, error) {
	if to != reflect.TypeFor[ByteSize]() || from.Kind() != reflect.String {
		return data, nil
	}
	return ParseByteSize(data.(string))
}
