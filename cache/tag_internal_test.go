package cache

import (
	"errors"
	"testing"

	"github.com/dgraph-io/badger/v4"
	"go.uber.org/zap"
)

func TestDamagedTagRecordIsNoAnswer(t *testing.T) {
	s, err := Open(t.TempDir(), Options{}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, v := range []string{`{not json`, `{}`, `{"digest":"sha256:short"}`, `{"digest":7}`} {
		if err := s.db.Update(func(txn *badger.Txn) error { return txn.Set(tagKey("docker.io", "library/a", "1"), []byte(v)) }); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Tag("docker.io", "library/a", "1"); !errors.Is(err, ErrNotFound) {
			t.Errorf("record %s: %v, want ErrNotFound so upstream is asked again", v, err)
		}
	}
}
