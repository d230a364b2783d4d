// glibc's rand()/random() with its default state (TYPE_3: an additive
// feedback generator of degree 31, separation 3), reproduced bit for bit.
// The reference nfqlb draws its Maglev permutations from an unseeded rand(),
// so tables are only interchangeable with it if we draw the same numbers.

const DEGREE = 31;
const SEPARATION = 3;
// glibc discards this many outputs after seeding so the state is well mixed.
const DISCARD = 10 * DEGREE;
const LCG_MODULUS = 2147483647; // 2^31 - 1, the Park-Miller "minimal standard" LCG
const LCG_MULTIPLIER = 16807;

export class GlibcRandom {
  private readonly state = new Int32Array(DEGREE);
  private front = SEPARATION;
  private rear = 0;

  /** `seed` as given to srand(); an unseeded rand() behaves as seed 1. */
  constructor(seed = 1) {
    // srand() takes an unsigned int and treats 0 as 1.
    let word = seed >>> 0 || 1;
    this.state[0] = word;
    for (let i = 1; i < DEGREE; i++) {
      // The seed word is signed in glibc, so a seed above 2^31 starts negative;
      // both paths reduce into [0, 2^31 - 1) exactly like glibc's Schrage step.
      const signed = word | 0;
      word = (LCG_MULTIPLIER * signed) % LCG_MODULUS;
      if (word < 0) word += LCG_MODULUS;
      this.state[i] = word;
    }
    for (let i = 0; i < DISCARD; i++) this.next();
  }

  /** The next rand() output, 0 ..= 2^31 - 1. */
  next(): number {
    const state = this.state;
    const sum = ((state[this.front] as number) + (state[this.rear] as number)) | 0;
    state[this.front] = sum;
    this.front = this.front + 1 === DEGREE ? 0 : this.front + 1;
    this.rear = this.rear + 1 === DEGREE ? 0 : this.rear + 1;
    return sum >>> 1;
  }
}
