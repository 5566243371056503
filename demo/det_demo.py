"""Detect objects and masks with an mmfca detection config and checkpoint.

    python demo/det_demo.py IMAGE CONFIG CHECKPOINT [--out-file OUT.png]
                            [--score-thr 0.3]

Saves the image with boxes, masks and labels drawn over it.
"""
import argparse

import mmcv
from mmdet.apis import DetInferencer

import mmfca  # noqa: F401  registers FcaFormer


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('image', help='image file')
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument(
        '--out-file',
        default='det_result.png',
        help='where to save the drawing')
    parser.add_argument('--device', default='cpu', help='e.g. cpu, cuda:0')
    parser.add_argument(
        '--score-thr',
        type=float,
        default=0.3,
        help='draw detections scoring at least this')
    args = parser.parse_args()
    inferencer = DetInferencer(
        model=args.config, weights=args.checkpoint, device=args.device)
    result = inferencer(
        args.image, return_vis=True, pred_score_thr=args.score_thr)
    prediction = result['predictions'][0]
    mmcv.imwrite(result['visualization'][0][..., ::-1], args.out_file)
    kept = [s for s in prediction['scores'] if s >= args.score_thr]
    print(f'{len(kept)} detections with score >= {args.score_thr} '
          f'(of {len(prediction["scores"])})')
    print(f'drawing saved to {args.out_file}')


if __name__ == '__main__':
    main()
