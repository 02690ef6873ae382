package api

import "testing"

// BenchmarkCheckPassword is what one login costs the broker: argon2id at
// the parameters HashPassword uses.
func BenchmarkCheckPassword(b *testing.B) {
	h := HashPassword("correct horse battery")
	for b.Loop() {
		if !CheckPassword(h, "correct horse battery") {
			b.Fatal("the password does not check")
		}
	}
}
