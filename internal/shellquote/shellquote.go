// Package shellquote renders a command's argv as it would be typed to a
// POSIX shell, for listings (zp jobs, fleet jobs): words that need no
// quoting stay as they are, the others are single-quoted.
package shellquote

import "strings"

// Join quotes each word of argv where a shell needs it and joins them
// with spaces.
func Join(argv []string) string {
	q := make([]string, len(argv))
	for i, a := range argv {
		if a != "" && strings.IndexFunc(a, needsQuote) < 0 {
			q[i] = a
		} else {
			q[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
	}
	return strings.Join(q, " ")
}

func needsQuote(r rune) bool {
	return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./=:,+@%", r))
}
