package dev.calibquant.cache;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.Random;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.extension.RegisterExtension;

class HostStorageTest {

    @RegisterExtension
    final RandomSeedExtension seed = new RandomSeedExtension();

    private static MemorySegment randomBytes(Arena arena, Random random, int n) {
        MemorySegment s = arena.allocate(n);
        for (int i = 0; i < n; i++) {
            s.set(ValueLayout.JAVA_BYTE, i, (byte) (random.nextInt(255) + 1));
        }
        return s;
    }

    @Test
    void blocksAreZeroFilledAlignedAndCounted() {
        try (HostStorage storage = new HostStorage()) {
            StorageBlock a = storage.allocate(100, "a");
            StorageBlock b = storage.allocate(28, "b");
            assertThat(a.segment().byteSize()).isEqualTo(100);
            assertThat(a.segment().address() % HostStorage.ALIGNMENT).isZero();
            assertThat(a.segment().mismatch(MemorySegment.ofArray(new byte[100]))).isEqualTo(-1);
            assertThat(storage.liveBytes()).isEqualTo(128);
            assertThat(storage.liveBlocks()).isEqualTo(2);
            a.close();
            a.close(); // idempotent
            assertThat(storage.liveBytes()).isEqualTo(28);
            assertThatThrownBy(a::segment).isInstanceOf(IllegalStateException.class).hasMessageContaining("a is closed");
            b.close();
            assertThat(storage.liveBlocks()).isZero();
        }
    }

    @Test
    void writeAndCopyMoveStridedRows() {
        Random random = seed.random();
        try (Arena arena = Arena.ofConfined(); HostStorage storage = new HostStorage()) {
            MemorySegment source = randomBytes(arena, random, 60); // 3 rows of pitch 20
            StorageBlock first = storage.allocate(100, "first");
            StorageBlock second = storage.allocate(100, "second");
            storage.write(source, first, new RowCopy(4, 20, 10, 30, 8, 3));
            for (int r = 0; r < 3; r++) {
                assertThat(first.segment().asSlice(10 + r * 30, 8).mismatch(source.asSlice(4 + r * 20, 8)))
                        .isEqualTo(-1);
            }
            assertThat(first.segment().get(ValueLayout.JAVA_BYTE, 18)).isZero(); // just past row 0
            storage.copy(first, second, new RowCopy(10, 30, 0, 8, 8, 3));
            for (int r = 0; r < 3; r++) {
                assertThat(second.segment().asSlice(r * 8, 8).mismatch(source.asSlice(4 + r * 20, 8))).isEqualTo(-1);
            }
            first.close();
            second.close();
        }
    }

    @Test
    void outOfBoundsCopiesAreRejectedBeforeAnyByteMoves() {
        Random random = seed.random();
        try (Arena arena = Arena.ofConfined(); HostStorage storage = new HostStorage()) {
            MemorySegment source = randomBytes(arena, random, 64);
            StorageBlock block = storage.allocate(64, "target");
            // rows 0 and 1 fit, row 2 would end at 2*30+8 = 68 > 64
            assertThatThrownBy(() -> storage.write(source, block, new RowCopy(0, 16, 0, 30, 8, 3)))
                    .isInstanceOf(IndexOutOfBoundsException.class).hasMessageContaining("target of 64 bytes");
            assertThat(block.segment().mismatch(MemorySegment.ofArray(new byte[64]))).isEqualTo(-1);
            assertThatThrownBy(() -> storage.write(source, block, new RowCopy(60, 8, 0, 8, 8, 1)))
                    .isInstanceOf(IndexOutOfBoundsException.class).hasMessageContaining("source of 64 bytes");
            assertThatThrownBy(() -> new RowCopy(0, 8, 0, 4, 8, 2)).isInstanceOf(IllegalArgumentException.class)
                    .hasMessageContaining("overlap");
            assertThatThrownBy(() -> new RowCopy(Long.MAX_VALUE, 1, 0, 8, 8, 1).checkWithin(64, 64))
                    .isInstanceOf(IndexOutOfBoundsException.class).hasMessageContaining("overflow");
            block.close();
        }
    }

    @Test
    void blocksOfAnotherStorageAreRejected() {
        try (HostStorage one = new HostStorage(); HostStorage other = new HostStorage()) {
            StorageBlock a = one.allocate(8, "a");
            StorageBlock b = other.allocate(8, "b");
            assertThatThrownBy(() -> one.copy(a, b, RowCopy.contiguous(0, 0, 8)))
                    .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("b does not belong");
            a.close();
            b.close();
        }
    }

    @Test
    void closingWithLiveBlocksFreesAndNamesThem() {
        HostStorage storage = new HostStorage();
        StorageBlock kept = storage.allocate(48, "sequence 9 layer 1");
        assertThatThrownBy(storage::close).isInstanceOf(IllegalStateException.class)
                .hasMessageContaining("1 blocks").hasMessageContaining("sequence 9 layer 1 (48 bytes)");
        assertThat(kept.isOpen()).isFalse();
        assertThat(storage.liveBytes()).isZero();
        storage.close(); // idempotent, nothing more to report
        assertThatThrownBy(() -> storage.allocate(8, "late")).isInstanceOf(IllegalStateException.class)
                .hasMessageContaining("closed");
    }

    @Test
    void aPairIsTwoZeroFilledBlocksClosedOneByOne() {
        try (HostStorage storage = new HostStorage()) {
            BlockPair pair = storage.allocatePair(96, 40, "span");
            assertThat(pair.keys().label()).isEqualTo("span keys");
            assertThat(pair.values().label()).isEqualTo("span values");
            assertThat(pair.keys().byteSize()).isEqualTo(96);
            assertThat(pair.values().byteSize()).isEqualTo(40);
            assertThat(pair.byteSize()).isEqualTo(136);
            assertThat(pair.keys().segment().mismatch(MemorySegment.ofArray(new byte[96]))).isEqualTo(-1);
            assertThat(pair.values().segment().mismatch(MemorySegment.ofArray(new byte[40]))).isEqualTo(-1);
            assertThat(storage.liveBlocks()).isEqualTo(2);
            pair.keys().close();
            assertThat(pair.values().isOpen()).isTrue();
            pair.values().close();
            assertThat(storage.liveBytes()).isZero();
        }
    }

    @Test
    void aPairWhoseValuesCannotBeAllocatedLeavesNothing() {
        try (HostStorage host = new HostStorage()) {
            KvStorage failingValues = new HostDelegate(host) {
                @Override
                public StorageBlock allocate(long bytes, String label) {
                    if (label.endsWith("values")) {
                        throw new OutOfMemoryError("no room for " + label);
                    }
                    return host.allocate(bytes, label);
                }
            };
            assertThatThrownBy(() -> failingValues.allocatePair(64, 64, "layer 0")).isInstanceOf(OutOfMemoryError.class)
                    .hasMessageContaining("layer 0 values");
            assertThat(host.liveBlocks()).isZero();
        }
    }
}
