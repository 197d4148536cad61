package db

// SetTestHookBeforeCommit sets the function Register runs after writing
// a batch's rows, before committing them (nil: none).
func SetTestHookBeforeCommit(f func()) { testHookBeforeCommit = f }
